"""Blind deblurring (issue 5): quality on real blur with ground truth, speed, and the pictures of the docs.

    python benchmarks/bench_deblur.py [--parts levin,gopro,speed,pictures] [--limit N] [--preset fast] [--model SRC]

- ``levin``: Levin et al. 2009, all 32 real camera-shake images (255x255 grey, linear: gamma=1.0), the standard
  protocol: :func:`kernelspace.metrics.aligned` (best sub-pixel shift, 15-px crop), then PSNR/SSIM; the error
  ratio is ||estimate - gt|| / ||deconvolve(blurry, recorded kernel) - gt|| on that crop. The blurry input and the
  recorded kernel (same non-blind solver) are rows of the table too. Writes results/deblur_levin.json.
- ``gopro``: 6 real GoPro pairs (1280x720 RGB, non-uniform blur): PSNR/SSIM of the deblurred frame against the
  sharp one after the same alignment, beside the blurry input's own. Writes results/deblur_gopro.json.
- ``kodak``: the 24 Kodak photos (768x512 RGB) with real camera-shake shapes of 11-141 px and 1% noise: PSNR
  (aligned, cropped by half the kernel side) of the blind result beside the blurry input and beside
  non-blind deconvolution with the true kernel (same solver), and the blur length found (the largest tile's
  ``blur_length``) against the true kernel's side. Writes results/deblur_kodak.json.
- ``speed``: seconds per image at 256x256 (a crop of a GoPro frame) and at 1280x720 (a whole frame), with the
  peak memory of the process. Writes results/deblur_speed.json.
- ``pictures``: blurry / deblurred / blur map side by side for a Levin image, two GoPro frames and three real
  photos without ground truth, as small JPEGs in docs/img/deblur/.

``--gamma`` sets the photos' response exponent (default 1.0, the library's default; results/deblur_gopro_gammaG.json
for others).
``--limit N`` takes the first N images of each set. Timings depend on the load on the machine; the JSON records
the load average when the run started and ended.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import peak_rss_mib, report
from PIL import Image

from kernelspace import BlindDeblurrer, load_model, render_kernel
from kernelspace.deblur import deconvolve
from kernelspace.metrics import aligned, psnr, ssim

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
PICTURES = Path(__file__).resolve().parents[1] / "docs" / "img" / "deblur"
REAL_PHOTOS = ("postcard.png", "blurred_cho.png", "toy.png")


def _tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    a = np.asarray(image).astype(np.float32) / 255
    return torch.from_numpy(a)[None, None] if a.ndim == 2 else torch.from_numpy(a).permute(2, 0, 1)[None]


def _recorded_kernel(kernel: int) -> torch.Tensor:
    psf = torch.from_numpy(np.load(DATA / "levin2009" / "kernels" / f"levin09_kernel{kernel}.npy")).float()
    # The solver takes odd sides; a zero row/column at the bottom/right keeps the taps where they are.
    return F.pad(psf, (0, 1 - psf.shape[1] % 2, 0, 1 - psf.shape[0] % 2))


def levin_images(limit: int):
    """Levin 2009's first ``limit`` images (kernel by kernel): (image number, kernel number, sharp tensor, blurry
    PIL image), grey."""
    root = DATA / "levin2009"
    for kernel in range(1, 9):
        for image in range(1, 5):
            if limit <= 0:
                return
            limit -= 1
            sharp = _tensor(Image.open(root / "gt" / f"im{image}.png").convert("L"))
            yield image, kernel, sharp, Image.open(root / "blur" / f"im{image}_kernel{kernel}_img.png").convert("L")


def levin(deblurrer: BlindDeblurrer, limit: int) -> tuple[list[dict], list[dict]]:
    per_image, sums = [], {}
    for image, kernel, sharp, blurry_img in levin_images(limit):
        blurry = _tensor(blurry_img)
        start = time.perf_counter()
        estimate = _tensor(deblurrer(blurry_img))
        seconds = time.perf_counter() - start
        recorded = deconvolve(blurry, _recorded_kernel(kernel))
        row = {"image": f"im{image}_kernel{kernel}", "seconds": seconds}
        errors = {}
        for name, result in (("blurry", blurry), ("blind", estimate), ("recorded", recorded)):
            est, gt = aligned(result, sharp)
            row[f"{name}_psnr"], row[f"{name}_ssim"] = psnr(est, gt), ssim(est, gt)
            errors[name] = (est - gt).norm().item()
        row["error_ratio"] = errors["blind"] / errors["recorded"]
        per_image.append(row)
        print(f"{row['image']}: blurry {row['blurry_psnr']:.2f} dB, blind {row['blind_psnr']:.2f} dB, recorded "
              f"kernel {row['recorded_psnr']:.2f} dB, error ratio {row['error_ratio']:.2f} ({seconds:.1f} s)", flush=True)
    for name, label in (("blurry", "blurry input"), ("blind", f"{deblurrer.preset} preset (blind)"),
                        ("recorded", "recorded kernel (non-blind, same solver)")):
        sums[name] = {
            "method": label, "images": len(per_image),
            "psnr_db": float(np.mean([r[f"{name}_psnr"] for r in per_image])),
            "ssim": float(np.mean([r[f"{name}_ssim"] for r in per_image])),
        }
    ratios = np.array([r["error_ratio"] for r in per_image])
    sums["blind"].update(error_ratio_mean=float(ratios.mean()), error_ratio_le_2=float((ratios <= 2).mean()),
                         error_ratio_le_3=float((ratios <= 3).mean()),
                         seconds_per_image=float(np.mean([r["seconds"] for r in per_image])))
    sums["recorded"].update(error_ratio_mean=1.0, error_ratio_le_2=1.0, error_ratio_le_3=1.0)
    return list(sums.values()), per_image


def gopro(deblurrer: BlindDeblurrer, limit: int) -> list[dict]:
    root = DATA / "gopro_pairs6"
    rows = []
    for path in sorted((root / "blur").glob("*.png"))[:limit]:
        blurry_img = Image.open(path).convert("RGB")
        sharp, blurry = _tensor(Image.open(root / "sharp" / path.name).convert("RGB")), _tensor(blurry_img)
        start = time.perf_counter()
        estimate = _tensor(deblurrer(blurry_img))
        seconds = time.perf_counter() - start
        row = {"frame": path.name, "seconds": seconds}
        for name, result in (("blurry", blurry), ("deblurred", estimate)):
            est, gt = aligned(result, sharp)
            row[f"{name}_psnr"], row[f"{name}_ssim"] = psnr(est, gt), ssim(est, gt)
        rows.append(row)
        print(f"{path.name}: blurry {row['blurry_psnr']:.2f} dB, deblurred {row['deblurred_psnr']:.2f} dB "
              f"({seconds:.1f} s)", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "frame"}
    return rows + [{"frame": "mean", **mean}]


def kodak(deblurrer: BlindDeblurrer, limit: int) -> list[dict]:
    root = DATA / "kodak24_large_blur"
    rows = []
    for path in sorted((root / "blur").glob("*.png"))[:limit]:
        true = torch.from_numpy(np.load(root / "kernels" / f"{path.stem}.npy")).float()
        sharp, blurry = _tensor(Image.open(root / "sharp" / path.name).convert("RGB")), _tensor(Image.open(path))
        start = time.perf_counter()
        estimate = deblurrer(blurry)
        seconds = time.perf_counter() - start
        found = [r["blur_length"] for r in deblurrer.tile_reports]
        row = {"image": path.stem, "true_side": true.shape[-1], "found_length": max(found), "seconds": seconds}
        for name, result in (("blurry", blurry), ("blind", estimate), ("true_kernel", deconvolve(blurry, true))):
            row[f"{name}_psnr"] = psnr(*aligned(result, sharp, crop=max(15, true.shape[-1] // 2 + 1)))
        rows.append(row)
        print(f"{path.stem} (kernel {row['true_side']} px, found {found}): blurry {row['blurry_psnr']:.2f}, blind "
              f"{row['blind_psnr']:.2f}, true kernel {row['true_kernel_psnr']:.2f} dB ({seconds:.0f} s)", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
    return rows + [{"image": "mean", **mean}]


def speed(deblurrer: BlindDeblurrer) -> list[dict]:
    frame = Image.open(DATA / "gopro_pairs6" / "blur" / "00.png").convert("RGB")
    rows = []
    for label, image in (("256x256 RGB", frame.crop((512, 232, 768, 488))), ("1280x720 RGB", frame)):
        start = time.perf_counter()
        deblurrer(image)
        rows.append({"size": label, "seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib()})
        print(rows[-1], flush=True)
    return rows


def pictures(deblurrer: BlindDeblurrer, gamma_linear: BlindDeblurrer) -> list[dict]:
    """blurry | deblurred | blur map, each panel at most 360 px high, as JPEG."""
    PICTURES.mkdir(parents=True, exist_ok=True)
    examples = [("levin_im1_kernel2", DATA / "levin2009" / "blur" / "im1_kernel2_img.png", gamma_linear),
                ("gopro_00", DATA / "gopro_pairs6" / "blur" / "00.png", deblurrer),
                ("gopro_05", DATA / "gopro_pairs6" / "blur" / "05.png", deblurrer)]  # the failure: a periodic facade
    examples += [(f"real_{Path(name).stem}", DATA / "real_blur_noref" / "blur" / name, deblurrer) for name in REAL_PHOTOS]
    rows = []
    for name, path, which in examples:
        blurry = Image.open(path).convert("RGB")
        start = time.perf_counter()
        sharp, kernel = which(blurry, return_kernel=True)
        seconds = time.perf_counter() - start
        panels = [blurry, sharp, render_kernel(kernel, which.model, image=blurry)]
        scale = min(1.0, 360 / blurry.height)
        size = (round(blurry.width * scale), round(blurry.height * scale))
        sheet = Image.new("RGB", (3 * size[0] + 8, size[1]), "white")
        for i, panel in enumerate(panels):
            sheet.paste(panel.resize(size, Image.LANCZOS), (i * (size[0] + 4), 0))
        out = PICTURES / f"{name}.jpg"
        sheet.save(out, quality=85)
        rows.append({"picture": out.name, "source": path.name, "seconds": seconds, "kib": out.stat().st_size / 1024})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a load_model source (default: the shipped default model)")
    parser.add_argument("--parts", default="levin,gopro,speed", help="comma-separated: levin, gopro, kodak, speed, "
                        "pictures")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    parser.add_argument("--preset", default="fast", choices=["fast", "paper"])
    parser.add_argument("--gamma", type=float, default=1.0, help="response exponent for the photos (GoPro, speed, "
                        "pictures; Levin is linear and always uses 1.0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    photos = BlindDeblurrer(model, args.preset, gamma=args.gamma, progress=False)
    linear = BlindDeblurrer(model, args.preset, gamma=1.0, progress=False)
    limit = args.limit or 10**6

    def context() -> dict:
        return {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "load_average": os.getloadavg(),
                "preset": args.preset, "limit": args.limit,
                "gamma_photos": args.gamma}

    for part in args.parts.split(","):
        started = context()
        if part == "levin":
            summary, per_image = levin(linear, limit)
            report("deblur_levin", summary, ["method", "images", "psnr_db", "ssim", "error_ratio_mean",
                                             "error_ratio_le_2", "error_ratio_le_3", "seconds_per_image"],
                   extra={"started": started, "ended": context(), "per_image": per_image})
        elif part == "gopro":
            rows = gopro(photos, limit)
            name = "deblur_gopro" if args.gamma == 1.0 else f"deblur_gopro_gamma{args.gamma:g}"
            report(name, rows, ["frame", "blurry_psnr", "blurry_ssim", "deblurred_psnr", "deblurred_ssim", "seconds"],
                   extra={"started": started, "ended": context()})
        elif part == "kodak":
            report("deblur_kodak", kodak(photos, limit), ["image", "true_side", "found_length", "blurry_psnr",
                                                           "blind_psnr", "true_kernel_psnr", "seconds"],
                   extra={"started": started, "ended": context()})
        elif part == "speed":
            report("deblur_speed", speed(photos), ["size", "seconds", "peak_rss_mib"],
                   extra={"started": started, "ended": context()})
        elif part == "pictures":
            report("deblur_pictures", pictures(photos, linear), ["picture", "source", "seconds", "kib"],
                   extra={"started": started, "ended": context()})
        else:
            raise SystemExit(f"unknown part {part!r}; choose from levin, gopro, kodak, speed, pictures")


if __name__ == "__main__":
    main()
