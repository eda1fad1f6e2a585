"""Blur transfer on real pairs the model never trained on, and the kernel space's speed (issue 3's targets).

    python benchmarks/bench_transfer.py [--model SOURCE] [--parts speed,levin,gopro] [--gopro N]
        [--method fast|solve|learned] [--learned-steps N] [--device cpu|cuda|auto]

- Levin 2009, same pair: PSNR(F(x, G(x, y)), y) after the standard shift alignment on a 15-px crop (32 pairs).
  Target >= 41.7 dB (re-blurring with the recorded kernel: 44.7 dB; blurry vs sharp: 23.3 dB).
- Levin across scenes: k from scene i's pair applied to scene j's sharp image, scored against scene j's real
  blurry image with the same recorded kernel (96 ordered pairs). Target >= 40 dB.
- GoPro (6 real pairs, 1280x720, non-uniform blur), same pair, full frames. Target >= 35 dB, identity beside it.
- Speed at 256x256 RGB, batch 16: apply_kernel target >= 200 images/s. Extraction time per pair at 256x256
  (batch 1 and 16) and 1280x720, beside the published architecture's G measured in the same run (target: no
  slower); the coupled solver (``method="solve"``) at 256x256 beside it, and a model's learned extractor
  (``method="learned"``) alone and with its corrections, when it has one.
- ``latent`` (models with a learned kernel space): how well the latent space expresses Levin's recorded kernels:
  each kernel encoded and decoded, and a latent fitted to each real pair by gradient descent on the Charbonnier
  re-blur loss (started from the encoding); scored like the same-pair transfer.

``--model`` takes anything ``kernelspace.load_model`` takes; without it, the shipped default model. ``--method``
picks the extraction method Levin and GoPro are scored with (default: the model's), ``--learned-steps`` the
corrections after a learned extractor's estimate (default: the model's). ``--device`` runs everything there
(the published G too); results are written as ``transfer_<parts>[_<method>][_cuda].json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import report, seconds_per_call
from PIL import Image

from kernelspace import load_model
from kernelspace.device import resolve_device
from kernelspace.metrics import aligned, charbonnier, psnr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _score(estimate: np.ndarray, reference: np.ndarray) -> float:
    def t(a: np.ndarray) -> torch.Tensor:
        a = torch.from_numpy(a.astype(np.float32) / 255)
        return a[None, None] if a.ndim == 2 else a.permute(2, 0, 1)[None]

    return _score_t(t(estimate), t(reference))


def levin(model, method: str | None = None) -> list[dict]:
    root = DATA / "levin2009"
    rows, same, cross, identity = [], [], [], []
    for kernel in range(1, 9):
        sharp = {i: _grey(root / "gt" / f"im{i}.png") for i in range(1, 5)}
        blurry = {i: _grey(root / "blur" / f"im{i}_kernel{kernel}_img.png") for i in range(1, 5)}
        ks = {}
        for i in range(1, 5):
            start = time.perf_counter()
            ks[i] = model.extract_kernel(sharp[i], blurry[i], method=method)
            seconds = time.perf_counter() - start
            same.append(_score(model.apply_kernel(sharp[i], ks[i]), blurry[i]))
            identity.append(_score(sharp[i], blurry[i]))
            print(f"levin im{i} kernel{kernel}: same pair {same[-1]:.2f} dB (identity {identity[-1]:.2f}), "
                  f"extract {seconds:.1f} s", flush=True)
        for i in range(1, 5):
            for j in range(1, 5):
                if i != j:
                    cross.append(_score(model.apply_kernel(sharp[j], ks[i]), blurry[j]))
        print(f"levin kernel{kernel}: across scenes {np.mean(cross[-12:]):.2f} dB", flush=True)
    rows.append({"set": "Levin 2009 same pair (32)", "psnr_db": float(np.mean(same)), "min_db": float(np.min(same)),
                 "identity_db": float(np.mean(identity)), "target_db": 41.7})
    rows.append({"set": "Levin 2009 across scenes (96)", "psnr_db": float(np.mean(cross)),
                 "min_db": float(np.min(cross)), "identity_db": float(np.mean(identity)), "target_db": 40.0})
    return rows


def gopro(model, limit: int, method: str | None = None) -> list[dict]:
    root = DATA / "gopro_pairs6"
    same, identity = [], []
    for path in sorted((root / "sharp").glob("*.png"))[:limit]:
        sharp = np.asarray(Image.open(path).convert("RGB"))
        blurry = np.asarray(Image.open(root / "blur" / path.name).convert("RGB"))
        start = time.perf_counter()
        k = model.extract_kernel(sharp, blurry, method=method)
        seconds = time.perf_counter() - start
        same.append(_score(model.apply_kernel(sharp, k), blurry))
        identity.append(_score(sharp, blurry))
        print(f"gopro {path.name}: same pair {same[-1]:.2f} dB (identity {identity[-1]:.2f}), extract {seconds:.0f} s",
              flush=True)
    return [{"set": f"GoPro same pair ({len(same)})", "psnr_db": float(np.mean(same)), "min_db": float(np.min(same)),
             "identity_db": float(np.mean(identity)), "target_db": 35.0}]


def latent(model, steps: int = 60) -> list[dict]:
    root = DATA / "levin2009"
    coded, fitted, recorded = [], [], []
    for kernel in range(1, 9):
        psf = torch.from_numpy(np.load(root / "kernels" / f"levin09_kernel{kernel}.npy")).float()
        for i in range(1, 5):
            x = torch.from_numpy(_grey(root / "gt" / f"im{i}.png") / 255.0).float()[None, None]
            y = torch.from_numpy(_grey(root / "blur" / f"im{i}_kernel{kernel}_img.png") / 255.0).float()[None, None]
            grid = model.kernel_size_for(*x.shape[-2:])
            field = model.fit_canvas(psf[None])[:, None, None].expand(1, *grid, -1, -1)
            true_k = model.pack(field, torch.ones(1))  # Levin's images are linear: response exponent 1
            with torch.no_grad():
                z = model.encode_kernel(true_k).mean((2, 3), keepdim=True)
            z.requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=0.05)
            decode = lambda z: model.decode_kernel(z.expand(-1, -1, *grid), 1.0)  # noqa: E731
            with torch.no_grad():
                start = model.apply_kernel(x, decode(z))
            for _ in range(steps):
                loss = charbonnier(model.apply_kernel(x, decode(z)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                recorded.append(_score_t(model.apply_kernel(x, true_k), y))
                coded.append(_score_t(start, y))
                fitted.append(_score_t(model.apply_kernel(x, decode(z)), y))
            print(f"latent im{i} kernel{kernel}: recorded {recorded[-1]:.2f}, encoded {coded[-1]:.2f}, "
                  f"fitted {fitted[-1]:.2f} dB", flush=True)
    return [
        {"set": f"Levin kernel space: recorded kernel, encoded + decoded (32)", "psnr_db": float(np.mean(coded)),
         "min_db": float(np.min(coded)), "reference_db": float(np.mean(recorded))},
        {"set": f"Levin kernel space: latent fitted to the pair ({steps} steps, 32)", "psnr_db": float(np.mean(fitted)),
         "min_db": float(np.min(fitted)), "reference_db": float(np.mean(recorded))},
    ]


def _score_t(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return psnr(*aligned(estimate.clamp(0, 1), reference))


def speed(model) -> list[dict]:
    """apply_kernel's throughput, and extraction time per pair beside the published architecture's G (random
    weights: its speed does not depend on them) in the same run."""
    from kernelspace.models import BKSNet

    g, device = torch.Generator().manual_seed(0), model.device
    sync = device.type == "cuda"  # CUDA calls return before the work is done: time to its end
    x = torch.rand(16, 3, 256, 256, generator=g).to(device)
    y = model.apply_kernel(x, model.sample_kernel(256, 256, batch=16, seed=0)).clamp(0, 1)
    k = model.extract_kernel(x[:1], y[:1])
    apply_s = seconds_per_call(lambda: model.apply_kernel(x, k.expand(16, -1, -1, -1)), repeat=7, sync=sync)
    rows = [{"set": "apply_kernel 256x256 batch 16", "images_per_s": 16 / apply_s, "target_images_per_s": 200}]
    torch.manual_seed(0)
    published = BKSNet().eval().to(device)
    big_x = torch.rand(1, 3, 720, 1280, generator=g).to(device)
    big_y = model.apply_kernel(big_x, model.sample_kernel(720, 1280, seed=1)).clamp(0, 1)
    cases = [("256x256 batch 1", x[:1], y[:1], 5), ("256x256 batch 16", x, y, 3), ("1280x720 batch 1", big_x, big_y, 3)]
    # (label, method, corrections after a learned estimate): the learned extractor alone and as the model has it
    variants = [("fast", "fast", None)]
    if getattr(model, "kernel_encoder", None) is not None:
        variants += [("learned, network only", "learned", 0), (f"learned + {model.learned_steps} corrections",
                                                                "learned", model.learned_steps)]
    steps = getattr(model, "learned_steps", None)
    for name, sx, sy, repeat in cases:
        theirs = seconds_per_call(lambda: published.extract_kernel(sx, sy), repeat=repeat, sync=sync) / len(sx)
        for label, method, corrections in variants + ([("solve", "solve", None)] if name == "256x256 batch 1" else []):
            if corrections is not None:
                model.learned_steps = corrections
            ours = seconds_per_call(lambda: model.extract_kernel(sx, sy, method=method), repeat=repeat,
                                    sync=sync) / len(sx)
            rows.append({"set": f"extract_kernel ({label}) {name}", "s_per_pair": ours,
                         "published_g_s_per_pair": theirs,
                         "images_per_s": 1 / ours, "no_slower": "yes" if ours <= theirs else "NO"})
        if steps is not None:
            model.learned_steps = steps
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a load_model source (default: the shipped default model)")
    parser.add_argument("--parts", default="speed,levin,gopro", help="comma-separated: speed, levin, gopro, latent")
    parser.add_argument("--gopro", type=int, default=6, help="how many GoPro pairs (slow on CPU)")
    parser.add_argument("--method", help="extraction method for levin and gopro (default: the model's)")
    parser.add_argument("--learned-steps", type=int, help="corrections after a learned extractor's estimate")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    model = load_model(args.model, device=device)
    if args.method is not None and args.method not in model.extraction_methods:
        parser.error(f"--method must be one of {', '.join(model.extraction_methods)}, got {args.method!r}")
    if args.learned_steps is not None:
        if args.learned_steps < 0 or not hasattr(model, "learned_steps"):
            parser.error("--learned-steps takes an integer >= 0, for a model with a learned extractor")
        model.learned_steps = args.learned_steps
    parts = args.parts.split(",")
    run = {"speed": speed, "levin": lambda m: levin(m, args.method),
           "gopro": lambda m: gopro(m, args.gopro, args.method), "latent": latent}
    unknown = set(parts) - run.keys()
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(run)}")
    rows = [row for part in parts for row in run[part](model)]
    suffix = "" if args.method is None else f"_{args.method}" + (
        "" if args.learned_steps is None else f"{args.learned_steps}")
    suffix += "" if device.type == "cpu" else f"_{device.type}"
    report("transfer_" + "_".join(parts) + suffix, rows, ["set", "psnr_db", "min_db", "identity_db", "reference_db", "target_db",
                                                 "images_per_s", "target_images_per_s", "s_per_pair", "published_g_s_per_pair",
                                                 "no_slower"])


if __name__ == "__main__":
    main()
