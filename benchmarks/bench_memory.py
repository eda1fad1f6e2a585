"""Peak memory (process RSS) of synthesis, augmentation, extraction and deblurring, each case in a fresh process.

    python benchmarks/bench_memory.py [--cases sample,transfer,augment,extract,deblur]
        [--sizes 256x256x16,1280x720,4000x3000] [--git-ref REF] [--large] [--max-rss-gb 8]

Inputs are real photos: GoPro pairs from ../shared/data/eval/gopro_pairs6 (sixteen 256x256 crops of the six
pairs; frame 00 at 1280x720; frame 00 resized to 4000x3000 with bicubic interpolation). They are written once to
a temporary folder, and every case is a fresh Python process that loads the default model and its inputs, notes
its resident memory (``start_mib``), runs the case once and reports its peak (``VmHWM``), so each figure
includes the interpreter, PyTorch and the model (about 300 MiB) and nothing left over from another case.

- ``sample``: ``BlurSynthesizer().sample(image, seed=0)``;
- ``transfer``: ``BlurSynthesizer().transfer(sharp, blurry, image)`` with a real 256x256 GoPro pair as the source
  (its extraction is included);
- ``augment``: ``KernelSpaceAugment(p=1.0)(image)``;
- ``extract``: ``model.extract_kernel(sharp, blurry)`` on the real pair, with ``--extract-iterations`` FISTA
  iterations instead of 150 and 60 (default 2): memory per iteration is the same, time is not;
- ``deblur``: ``kernelspace.deblur(blurry)`` (the fast preset).

Extraction and deblurring above 2 megapixels take a long time (extraction at 4000x3000: 13 minutes even at 2
iterations; deblurring: about half an hour), so they run only with ``--large``.

``--git-ref REF`` measures the package as it was at commit REF too (``git archive`` of its ``kernelspace/``
into a temporary folder), case by case beside the working tree, so before and after share the machine's state.
A case whose resident memory passes ``--max-rss-gb`` is stopped (the machine is shared) and recorded as above
that limit. Rows go to benchmarks/results/memory.json, merged with the rows already there by (case, size, code),
so partial runs add up; times are single runs, noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, report
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOPRO = ROOT.parent / "shared" / "data" / "eval" / "gopro_pairs6"
CASES = ("sample", "transfer", "augment", "extract", "deblur")
SIZES = ("256x256x16", "1280x720", "4000x3000")
SOURCE_CROP = 256  # the transfer's source pair


def _size(text: str) -> tuple[int, int, int]:
    """``WxH`` or ``WxHxB`` -> (width, height, batch)."""
    parts = [int(p) for p in text.split("x")]
    if len(parts) not in (2, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be WxH or WxHxB, got {text!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 1


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def prepare_inputs(folder: Path, sizes: list[str]) -> None:
    """Write ``sharp_SIZE.npy`` / ``blurry_SIZE.npy`` (uint8, HxWx3 or BxHxWx3) and the transfer's source pair."""
    pairs = [(_load(GOPRO / "sharp" / f"{i:02d}.png"), _load(GOPRO / "blur" / f"{i:02d}.png")) for i in range(6)]
    sharp0, blurry0 = pairs[0]
    top, left = 232, 512
    np.save(folder / "source_sharp.npy", sharp0[top : top + SOURCE_CROP, left : left + SOURCE_CROP])
    np.save(folder / "source_blurry.npy", blurry0[top : top + SOURCE_CROP, left : left + SOURCE_CROP])
    for size in sizes:
        width, height, batch = _size(size)
        if batch > 1:  # crops spread over the six pairs
            crops = []
            for i in range(batch):
                sharp, blurry = pairs[i % len(pairs)]
                y = (i // len(pairs)) * (sharp.shape[0] - height) // 2
                x = (i * 197) % (sharp.shape[1] - width)
                crops.append((sharp[y : y + height, x : x + width], blurry[y : y + height, x : x + width]))
            sharp, blurry = (np.stack(c) for c in zip(*crops))
        else:
            sharp, blurry = (np.asarray(Image.fromarray(a).resize((width, height), Image.BICUBIC)) for a in pairs[0])
        np.save(folder / f"sharp_{size}.npy", sharp)
        np.save(folder / f"blurry_{size}.npy", blurry)


def _as_input(arr: np.ndarray):
    """A single image stays a numpy array (as a loaded photo is); a stack becomes a (B, 3, H, W) float batch."""
    if arr.ndim == 3:
        return arr
    import torch

    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)


def child(case: str, size: str, inputs: Path, extract_iterations: int) -> dict:
    """Run one case in this (fresh) process and return its figures."""
    import torch

    import kernelspace
    from kernelspace import BlurSynthesizer, KernelSpaceAugment, load_model

    model = load_model(None, device="cpu")
    sharp = _as_input(np.load(inputs / f"sharp_{size}.npy"))
    blurry = _as_input(np.load(inputs / f"blurry_{size}.npy")) if case in ("extract", "deblur") else None
    if case == "transfer":
        source = np.load(inputs / "source_sharp.npy"), np.load(inputs / "source_blurry.npy")
    start_mib = _rss_mib()
    start = time.perf_counter()
    if case == "sample":
        BlurSynthesizer(model, device="cpu").sample(sharp, seed=0)
    elif case == "transfer":
        BlurSynthesizer(model, device="cpu").transfer(*source, sharp)
    elif case == "augment":
        KernelSpaceAugment(p=1.0, model=model)(sharp, generator=torch.Generator().manual_seed(0))
    elif case == "extract":
        model.iterations = model.refine_iterations = extract_iterations
        model.extract_kernel(sharp, blurry)
    elif case == "deblur":
        kernelspace.deblur(blurry, progress=False)
    else:
        raise ValueError(f"unknown case {case!r}")
    return {"seconds": time.perf_counter() - start, "start_mib": start_mib, "peak_mib": _rss_mib(field="VmHWM"),
            "torch_threads": torch.get_num_threads()}


def _rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process, MiB: now (VmRSS) or its peak (VmHWM); 0 once it has gone.

    VmHWM, not ``ru_maxrss``: after a fork and exec, ``ru_maxrss`` also counts the parent's peak."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_case(case: str, size: str, code_root: Path, inputs: Path, args: argparse.Namespace) -> dict:
    """Run ``case`` in a fresh process importing kernelspace from ``code_root``; stop it above the RSS limit."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    cmd = [sys.executable, __file__, "--child", case, "--size", size, "--inputs", str(inputs),
           "--extract-iterations", str(args.extract_iterations)]
    limit_mib = args.max_rss_gb * 1024
    seen = 0.0
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            seen = max(seen, _rss_mib(proc.pid))
            if seen > limit_mib:
                proc.kill()
                proc.wait()
                return {"peak_mib": None, "note": f"stopped above the {args.max_rss_gb:g} GB limit"}
            time.sleep(0.05)
        err = proc.stderr.read()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"peak_mib": None, "note": f"failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def _archive(ref: str, folder: Path) -> str:
    """Unpack ``kernelspace/`` as it was at ``ref`` into ``folder``; returns the commit's short hash."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True,
                            capture_output=True, text=True).stdout.strip()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "kernelspace"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=tar, check=True)
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated WxH or WxHxB (B: batch)")
    parser.add_argument("--git-ref", help="also measure kernelspace/ as it was at this commit (e.g. 3c79c9e)")
    parser.add_argument("--large", action="store_true", help="include extraction and deblurring above 2 megapixels (slow)")
    parser.add_argument("--max-rss-gb", type=float, default=8.0, help="stop a case above this RSS (default 8)")
    parser.add_argument("--extract-iterations", type=int, default=2, help="FISTA iterations of extract (default 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.inputs, args.extract_iterations)))
        return
    cases, sizes = args.cases.split(","), args.sizes.split(",")
    if set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(set(cases) - set(CASES))}; choose from {', '.join(CASES)}")
    for size in sizes:
        try:
            _size(size)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    if not GOPRO.is_dir():
        parser.error(f"the GoPro pairs are not at {GOPRO}")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        prepare_inputs(inputs, sizes)
        codes = [("tree", ROOT)]
        if args.git_ref:
            old = Path(tmp) / "ref"
            old.mkdir()
            codes.insert(0, (_archive(args.git_ref, old), old))
        rows = []
        for case in cases:
            for size in sizes:
                width, height, _ = _size(size)
                if case in ("extract", "deblur") and width * height > 2_000_000 and not args.large:
                    print(f"{case} {size}: skipped (slow; add --large)")
                    continue
                for code, code_root in codes:  # before and after back to back
                    result = run_case(case, size, code_root, inputs, args)
                    peak = result.get("peak_mib")
                    row = {"case": case, "size": size, "code": code, "peak_mib": peak,
                           "start_mib": result.get("start_mib"),
                           "added_mib": None if peak is None else peak - result["start_mib"],
                           "seconds": result.get("seconds"), "threads": result.get("torch_threads"), "load_1min": os.getloadavg()[0],
                           "note": result.get("note", "")}
                    rows.append(row)
                    print(f"{case} {size} [{code}]: peak {peak if peak is None else round(peak)} MiB "
                          f"{row['note']}", flush=True)
    merged = _merge(rows)
    columns = ["case", "size", "code", "peak_mib", "start_mib", "added_mib", "seconds", "threads", "load_1min", "note"]
    report("memory", merged, columns, extra={
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "extract_iterations": args.extract_iterations})


def _merge(rows: list[dict]) -> list[dict]:
    """The rows already in memory.json with these replacing any of the same (case, size, code)."""
    path = RESULTS / "memory.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    key = lambda r: (r["case"], r["size"], r["code"])  # noqa: E731
    new = {key(r): r for r in rows}
    kept = [r for r in old if key(r) not in new]
    order = {c: i for i, c in enumerate(CASES + SIZES)}
    return sorted(kept + rows, key=lambda r: (order.get(r["case"], 99), order.get(r["size"], 99), r["code"] == "tree"))


if __name__ == "__main__":
    main()
