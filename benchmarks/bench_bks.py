"""Speed and peak memory of the published network (released configuration, random weights).

    python benchmarks/bench_bks.py [--device cpu|cuda]

Each case runs in a fresh process so that its peak memory is its own. Targets (issue 2): no slower than the
published code measured on the project's 2-core CPU: 0.124 s (extract_kernel) and 0.205 s (apply_kernel) per
256x256 image at batch 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = [(256, 256, 1), (256, 256, 8), (720, 1280, 1)]
TARGETS = {("extract_kernel", 256, 1): 0.124, ("apply_kernel", 256, 1): 0.205}


def _one_case(op: str, height: int, width: int, batch: int, device: str) -> dict:
    import torch

    from common import peak_rss_mib, seconds_per_call

    from kernelspace.models import BKSNet

    torch.manual_seed(0)
    net = BKSNet().to(device).eval()
    x = torch.rand(batch, 3, height, width, device=device)
    k = net.extract_kernel(x, x)
    fn = (lambda: net.extract_kernel(x, x)) if op == "extract_kernel" else (lambda: net.apply_kernel(x, k))
    cuda = device.startswith("cuda")
    base = peak_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = seconds_per_call(fn, repeat=5 if height * width * batch <= 256 * 256 * 8 else 3, sync=cuda)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    return {
        "op": op,
        "size": f"{height}x{width}",
        "batch": batch,
        "s_per_call": seconds,
        "s_per_image": seconds / batch,
        "images_per_s": batch / seconds,
        "peak_mib": peak,
        "peak_kind": "CUDA allocated" if cuda else f"process RSS (model + inputs: {base:.0f} MiB)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        op, h, w, b = args.case.split(",")
        print(json.dumps(_one_case(op, int(h), int(w), int(b), args.device)))
        return
    rows = []
    for op in ("extract_kernel", "apply_kernel"):
        for h, w, b in CASES:
            run = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--case", f"{op},{h},{w},{b}"],
                capture_output=True, text=True, check=True,
            )
            row = json.loads(run.stdout.strip().splitlines()[-1])
            target = TARGETS.get((op, h, b)) if w == h else None
            row["target_s_per_image"] = target if target else ""
            row["meets_target"] = ("yes" if row["s_per_image"] <= target else "NO") if target else ""
            rows.append(row)
    from common import report

    report(
        f"bks_{args.device.replace(':', '')}",
        rows,
        ["op", "size", "batch", "s_per_image", "images_per_s", "peak_mib", "target_s_per_image", "meets_target"],
    )


if __name__ == "__main__":
    main()
