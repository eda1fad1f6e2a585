"""Helpers shared by the benchmark scripts: timing, peak memory, a printed table and a JSON record, the command line of the picture scripts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, str | int]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
    }


def seconds_per_call(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 5, sync: bool = False) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> Path:
    """Print ``rows`` as a Markdown table and write them with the machine (and ``extra``) to ``results/<name>.json``."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    tmp = out.with_suffix(".json.part")
    tmp.write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2))
    os.replace(tmp, out)
    print(f"\nmachine: {machine()}\nwrote {out}")
    return out


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def picture_args(doc: str, default_out: str) -> argparse.Namespace:
    """The command line of the scripts that draw a picture for the docs: ``--model SOURCE`` and ``--out PNG``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", help="a load_model source (default: the shipped default model)")
    parser.add_argument("--out", default=default_out)
    return parser.parse_args()

