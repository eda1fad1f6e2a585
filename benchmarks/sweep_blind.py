"""How far tuning the fast preset's blind estimator can go on Levin 2009: one row per setting, and an oracle.

    python benchmarks/sweep_blind.py [--limit N] [--variants NAME,NAME]

Each variant changes one option of :func:`kernelspace.deblur.estimate.estimate_psf` or
:func:`kernelspace.deblur.deconvolve` (or refits the kernel once to the deconvolved image) and runs the whole
Levin set by the protocol of ``bench_deblur.py --parts levin``; the "none" variant is the preset itself. The last
row picks, for each image, the variant with the best PSNR *using the ground truth*: the ceiling of any rule
that chooses among these settings. About 10 minutes on 2 cores. Writes results/sweep_blind.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_deblur import _recorded_kernel, _tensor, levin_images
from common import report

from kernelspace.deblur import deconvolve
from kernelspace.deblur import estimate
from kernelspace.metrics import aligned, psnr

SIZE = 31  # the preset's PSF size for these images

#: name -> (estimate_psf options, deconvolve options, PSF size, refits)
VARIANTS = {
    "none (the preset)": ({}, {}, SIZE, 0),
    "kernel Tikhonov weight 1": ({"tikhonov": 1.0}, {}, SIZE, 0),
    "kernel Tikhonov weight 4": ({"tikhonov": 4.0}, {}, SIZE, 0),
    "faint taps cut at 10%": ({"keep": 0.1}, {}, SIZE, 0),
    "deconvolution weight 1e-4": ({}, {"weight": 1e-4}, SIZE, 0),
    "PSF size 23": ({}, {}, 23, 0),
    "PSF size 41": ({}, {}, 41, 0),
    "kernel refitted to the deconvolved image": ({}, {}, SIZE, 1),
}


def _refit(blurry: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Fit the kernel again, to the image deconvolved with it, and clean it as the estimator's last step does."""
    canvas = deconvolve(blurry, psf, canvas=True)
    fitted = estimate.fit_psf(canvas, blurry, psf.shape[-1], init=psf)
    return estimate._centre(estimate._clean(fitted, 0.05, 0.1))


def run(names: list[str], limit: int) -> tuple[list[dict], dict[str, list[dict]]]:
    images = []
    for image, kernel, sharp, blurry_img in levin_images(limit):
        blurry = _tensor(blurry_img)
        est, gt = aligned(deconvolve(blurry, _recorded_kernel(kernel)), sharp)
        images.append((f"im{image}_kernel{kernel}", image, sharp, blurry, (est - gt).norm().item()))
    per_variant: dict[str, list[dict]] = {}
    rows = []
    for name in names:
        estimate_options, deconvolve_options, size, refits = VARIANTS[name]
        start, results = time.perf_counter(), []
        for label, scene, sharp, blurry, recorded_error in images:
            psf = estimate.estimate_psf(blurry, size, **estimate_options)
            for _ in range(refits):
                psf = _refit(blurry, psf)
            est, gt = aligned(deconvolve(blurry, psf, **deconvolve_options), sharp)
            results.append({"image": label, "scene": scene, "psnr": psnr(est, gt),
                            "error_ratio": (est - gt).norm().item() / recorded_error})
        per_variant[name] = results
        rows.append(_summary(name, results, time.perf_counter() - start))
        print(rows[-1], flush=True)
    best = [max((per_variant[n][i] for n in names), key=lambda r: r["psnr"]) for i in range(len(images))]
    rows.append(_summary("best variant per image, chosen with the ground truth (oracle)", best, 0.0))
    return rows, per_variant


def _summary(name: str, results: list[dict], seconds: float) -> dict:
    ratios = np.array([r["error_ratio"] for r in results])
    row = {"variant": name, "psnr_db": float(np.mean([r["psnr"] for r in results])),
           "error_ratio_mean": float(ratios.mean()), "ratio_le_2": int((ratios <= 2).sum()), "images": len(results)}
    for scene in sorted({r["scene"] for r in results}):
        row[f"scene{scene}_db"] = float(np.mean([r["psnr"] for r in results if r["scene"] == scene]))
    row["seconds"] = seconds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names (default: all)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows, per_variant = run(names, args.limit or 10**6)
    columns = ["variant", "psnr_db", "error_ratio_mean", "ratio_le_2", "images"]
    columns += sorted(k for k in rows[0] if k.startswith("scene")) + ["seconds"]
    report("sweep_blind", rows, columns, extra={"per_image": per_variant})


if __name__ == "__main__":
    main()
