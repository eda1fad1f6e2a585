"""`kernelspace swap` on a folder of 1280x720 pairs: pairs per minute, and a run killed and resumed against one
that was not.

    python benchmarks/bench_swap.py [--batch 8]

The six GoPro pairs of ``../shared/data/eval/gopro_pairs6`` (plain ``blur/`` + ``sharp/`` layout), every pair a
blur source (``--pairs 6``). One uninterrupted run is timed; a second run into another folder is killed
(SIGKILL) once its first output is listed, then started again; the two folders' outputs must be byte-identical.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "gopro_pairs6"


def _command(out: Path, batch: int) -> list[str]:
    return [sys.executable, "-m", "kernelspace.cli", "swap", str(DATA), str(out), "--pairs", "6", "--batch", str(batch),
            "--device", "cpu", "--no-progress"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_swap_"))
    pairs = len(list((DATA / "sharp").glob("*.png")))

    start = time.perf_counter()
    subprocess.run(_command(work / "whole", args.batch), check=True, capture_output=True)
    seconds = time.perf_counter() - start

    killed = work / "killed"
    proc = subprocess.Popen(_command(killed, args.batch), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "swap_manifest.jsonl"
    while proc.poll() is None and not (manifest.is_file() and manifest.read_text().count("\n") >= 1):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = manifest.read_text().count("\n") if manifest.is_file() else 0
    subprocess.run(_command(killed, args.batch), check=True, capture_output=True)
    outputs = sorted(p.relative_to(work / "whole") for p in (work / "whole" / "blur").iterdir())
    same = all((work / "whole" / rel).read_bytes() == (killed / rel).read_bytes() for rel in outputs)
    rows = [{
        "case": f"swap {pairs} GoPro pairs 1280x720, batch {args.batch}", "seconds": seconds,
        "pairs_per_min": 60 * pairs / seconds, "killed_after_listed": done_before,
        "resumed_identical": "yes" if same and len(outputs) == pairs else "NO",
    }]
    report("swap", rows, ["case", "seconds", "pairs_per_min", "killed_after_listed", "resumed_identical"])


if __name__ == "__main__":
    main()
