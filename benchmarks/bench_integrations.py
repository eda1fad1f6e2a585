"""The augmentation's throughput inside torchvision's v2.Compose and albumentations' A.Compose, beside calling it
directly: what the pipelines add on top of the blur.

    <integration venv>/bin/python benchmarks/bench_integrations.py [--images N]

Run it in the integration environment (torchvision and albumentations; see the README, 'Integrations'). A real
photo from ../shared/data/train, 256x256 crops, the default model, every image blurred (p=1), one thread (as in
a DataLoader worker), the cases timed in interleaved rounds and the best round of each kept:

- one image per call: ``KernelSpaceAugment`` on a tensor, in ``v2.Compose`` on a ``tv_tensors.Image``, the v2
  adapter on ``(image, label)``; ``KernelSpaceAugment`` on a uint8 HxWx3 array and the albumentations adapter in
  ``A.Compose`` on the same array;
- a batch of 16 per call: ``KernelSpaceAugment`` on the tensor and in ``v2.Compose`` on a batched ``Image``.

Results go to benchmarks/results/integrations.json. Timings on a shared machine are noisy: the load is recorded
beside them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from common import report, seconds_per_call
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from kernelspace import KernelSpaceAugment, load_model
from kernelspace.integrations.albumentations import KernelSpaceBlur as AlbumentationsBlur
from kernelspace.integrations.torchvision import KernelSpaceBlur as TorchvisionBlur

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "cbsd68"
SIDE, BATCH = 256, 16


def crops(count: int) -> np.ndarray:
    """``count`` different 256x256 uint8 RGB crops of the real photos."""
    files = sorted(PHOTOS.iterdir())
    out = []
    for i in range(count):
        photo = np.asarray(Image.open(files[i % len(files)]).convert("RGB"))
        top, left = (7 * i) % (photo.shape[0] - SIDE), (11 * i) % (photo.shape[1] - SIDE)
        out.append(photo[top : top + SIDE, left : left + SIDE])
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per timed call (one at a time)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(device="cpu")
    arrays = crops(max(args.images, BATCH))
    tensors = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    images = [tv_tensors.Image(t) for t in tensors[: args.images]]
    aug = KernelSpaceAugment(p=1.0, model=model)
    in_v2 = v2.Compose([aug])
    adapter = v2.Compose([TorchvisionBlur(p=1.0, model=model)])
    in_albumentations = A.Compose([AlbumentationsBlur(p=1.0, model=model)], seed=0)
    batch = tensors[:BATCH].contiguous()
    items = list(range(args.images))
    # (name, one timed call, images it blurs, the direct case it is compared with, note)
    cases = [
        ("KernelSpaceAugment, tensor (direct)", lambda: [aug(tensors[i]) for i in items], len(items), 0,
         "one image per call"),
        ("v2.Compose([KernelSpaceAugment]), tv_tensors.Image", lambda: [in_v2(images[i]) for i in items], len(items),
         0, ""),
        ("v2.Compose([integrations.torchvision.KernelSpaceBlur]), (Image, label)",
         lambda: [adapter(images[i], i) for i in items], len(items), 0, "pytree flattening, v2 dispatch"),
        ("KernelSpaceAugment, uint8 HxWx3 array (direct)", lambda: [aug(arrays[i]) for i in items], len(items), 3,
         "one image per call"),
        ("A.Compose([integrations.albumentations.KernelSpaceBlur]), uint8 HxWx3",
         lambda: [in_albumentations(image=arrays[i])["image"] for i in items], len(items), 3, ""),
        (f"KernelSpaceAugment, batch of {BATCH} (direct)", lambda: aug(batch), BATCH, 5, "per image"),
        (f"v2.Compose([KernelSpaceAugment]), Image batch of {BATCH}", lambda: in_v2(tv_tensors.Image(batch)),
         BATCH, 5, "per image"),
    ]
    # Interleaved rounds, the best of each case: on a shared machine a slow spell then hits every case alike, and
    # the minimum is the least disturbed run.
    best = [float("inf")] * len(cases)
    for round_ in range(args.rounds + 1):
        for i, (_, call, count, _, _) in enumerate(cases):
            seconds = seconds_per_call(call, warmup=0, repeat=1) / count
            if round_:  # round 0 warms up (kernel pools, first calls)
                best[i] = min(best[i], seconds)
    rows = [
        {"case": name, "images_per_s": 1 / seconds, "ms_per_image": 1e3 * seconds,
         "overhead_pct": 100 * (seconds / best[base] - 1), "load_1min": os.getloadavg()[0], "note": note}
        for (name, _, _, base, note), seconds in zip(cases, best)
    ]
    report("integrations", rows, ["case", "images_per_s", "ms_per_image", "overhead_pct", "load_1min", "note"],
           extra={"side": SIDE, "threads": 1, "model": "default (KernelField)", "p": 1.0,
                  "timing": f"best of {args.rounds} interleaved rounds of {args.images} images (or one batch)"})


if __name__ == "__main__":
    main()
