"""KernelSpaceAugment's throughput beside kornia's motion blur, and whether it bottlenecks a DataLoader.

    python benchmarks/bench_augment.py [--model SOURCE] [--batches N] [--parts speed,loader]

- speed: 256x256 RGB, batch 16, every image blurred (p=1): the model's ``apply_kernel`` alone (the floor the
  augmentation sits on), ``KernelSpaceAugment`` (a fresh prior kernel per sample, a fixed pool of 64, and p=0.5;
  with the degradation chain: noise and JPEG on every sample, and the default ``Degradation()``, JPEG on half),
  kornia's ``RandomMotionBlur`` (short and long kernels) and albumentations' ``MotionBlur`` where it is
  installed. Target: >= 200 images/s for the augmentation (blur alone).
- loader: a DataLoader with 2 workers feeding 256x256 crops of the clean photos in ../shared/data/train
  (``PhotoFolder``): loading and cropping alone, the augmentation alone on those batches, and the two together
  (augmentation on each batch in the main process, and per image inside the workers), so one can see which part
  limits the pipeline.

Results go to benchmarks/results/augment.json. Timings on a shared machine are noisy: note the load beside them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import torch
from common import report, seconds_per_call
from torch.utils.data import DataLoader, Dataset, Subset

from kernelspace import Degradation, KernelSpaceAugment, load_model
from kernelspace.data.folders import PhotoFolder

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"
BATCH, SIDE = 16, 256


def _row(case: str, seconds_per_batch: float, note: str = "") -> dict:
    return {"case": case, "images_per_s": BATCH / seconds_per_batch, "ms_per_batch": 1e3 * seconds_per_batch,
            "load_1min": os.getloadavg()[0], "note": note}


def speed(model) -> list[dict]:
    x = torch.rand(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    aug = KernelSpaceAugment(p=1.0, model=model)
    half = KernelSpaceAugment(p=0.5, model=model)
    params = aug.forward_parameters(x.shape, torch.Generator().manual_seed(0))
    draw_s = seconds_per_call(lambda: aug.kernels(params, SIDE, SIDE), warmup=1, repeat=5)
    kernels = aug.kernels(params, SIDE, SIDE)
    pooled = KernelSpaceAugment(p=1.0, model=model, pool_size=64)
    pooled.kernel_pool(SIDE, SIDE)
    full_chain = KernelSpaceAugment(p=1.0, model=model, degradation=Degradation(p_noise=1.0, p_jpeg=1.0))
    default_chain = KernelSpaceAugment(p=1.0, model=model, degradation=Degradation())
    cases = [
        ("model.apply_kernel (floor)", lambda: model.apply_kernel(x, kernels), "one call, kernels given"),
        ("KernelSpaceAugment p=1", lambda: aug(x), f"a fresh prior kernel per sample (the default), drawn in "
                                                   f"{1e3 * draw_s:.1f} ms per batch"),
        ("KernelSpaceAugment p=1, pool_size=64", lambda: pooled(x), "a fixed pool of 64 prior kernels, built once"),
        ("KernelSpaceAugment p=0.5", lambda: half(x), "about half the batch blurred"),
        ("KernelSpaceAugment p=1, full chain", lambda: full_chain(x),
         "blur, Poisson-Gaussian noise, clipping, response, JPEG 60-95 on every sample"),
        ("KernelSpaceAugment p=1, Degradation()", lambda: default_chain(x), "the default chain: JPEG on half"),
        ("kornia RandomMotionBlur k=9", lambda: K.RandomMotionBlur(9, 35.0, 0.5, p=1.0)(x), "straight line, 9 px"),
        ("kornia RandomMotionBlur k=3..31", lambda: K.RandomMotionBlur((3, 31), 180.0, 1.0, p=1.0)(x),
         "straight line up to 31 px (the prior's reach)"),
    ]
    try:
        import albumentations as A

        blur = A.MotionBlur(blur_limit=(3, 31), p=1.0)
        frames = [(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for img in x]
        cases.append(("albumentations MotionBlur 3..31", lambda: [blur(image=f)["image"] for f in frames], "numpy"))
    except ImportError:
        print("albumentations is not installed: its MotionBlur is left out")
    # Rounds that time every case once each: a change in the machine's load hits all cases alike.
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for round_ in range(11):
        for name, fn, _ in cases:
            start = time.perf_counter()
            fn()
            if round_ >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    rows = []
    for name, _, note in cases:
        rows.append(_row(name, float(np.median(times[name])), note))
        print(f"{name}: {rows[-1]['images_per_s']:.0f} images/s", flush=True)
    floor, augment = rows[0]["ms_per_batch"], rows[1]["ms_per_batch"]
    rows[1]["note"] += f"; {augment - floor:+.1f} ms per batch over the floor"
    return rows


class _AugmentedPhotos(Dataset):
    """Photos blurred one by one inside the workers."""

    def __init__(self, photos: Dataset, aug: KernelSpaceAugment) -> None:
        self.photos, self.aug = photos, aug

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.aug(self.photos[index])


def _epoch_seconds(loader: DataLoader, per_batch=None) -> float:
    """Seconds for one pass over ``loader`` after a first (warm-up) pass that starts the workers."""
    for batch in itertools.islice(loader, 2):
        if per_batch is not None:
            per_batch(batch)
    start = time.perf_counter()
    for batch in loader:
        if per_batch is not None:
            per_batch(batch)
    return time.perf_counter() - start


def loader(model_source: str | None, batches: int) -> list[dict]:
    photos = Subset(PhotoFolder(PHOTOS, crop=SIDE), range(batches * BATCH))
    n = len(photos)

    def make(dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=BATCH, num_workers=2, persistent_workers=True,
                          generator=torch.Generator().manual_seed(0))

    # The augmentation is built from a source, so each worker loads the model itself (nothing heavy is pickled).
    aug = KernelSpaceAugment(p=1.0, model=model_source)
    load_s = _epoch_seconds(make(photos)) / n
    batches_seen = list(itertools.islice(make(photos), 3))

    def seconds_per_image(augment: KernelSpaceAugment) -> float:  # on the loaded batches, in memory
        return seconds_per_call(lambda: [augment(b) for b in batches_seen], warmup=1, repeat=3) / (
            len(batches_seen) * BATCH
        )

    aug_s = seconds_per_image(aug)
    main_s = _epoch_seconds(make(photos), per_batch=aug) / n
    default = KernelSpaceAugment(model=model_source)  # p=0.5, the default: about half of each batch blurred
    default_aug_s = seconds_per_image(default)
    default_s = _epoch_seconds(make(photos), per_batch=default) / n
    workers_s = _epoch_seconds(make(_AugmentedPhotos(photos, aug))) / n
    return [
        _row("load + crop only (2 workers)", BATCH * load_s,
             f"{n} photos from {PHOTOS.name}/, 256x256 crops, flips, rot90"),
        _row("augmentation only (main process)", BATCH * aug_s, "the same batches, in memory"),
        _row("augmentation only, p=0.5 (default)", BATCH * default_aug_s,
             f"{default_aug_s / load_s:.0%} of loading's time per batch"),
        _row("total: workers load, main blurs batches", BATCH * main_s,
             f"augmentation {aug_s / main_s:.0%} of the time"),
        _row("total: workers load, main blurs batches, p=0.5 (default)", BATCH * default_s,
             f"augmentation {default_aug_s / default_s:.0%} of the time; throughput {1 - load_s / default_s:.0%} "
             "below loading alone"),
        _row("total: workers load and blur each image", BATCH * workers_s,
             "one apply_kernel call per image, 1 thread per worker"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a load_model source (default: the shipped default model)")
    parser.add_argument("--batches", type=int, default=8, help="batches of 16 per DataLoader pass (default 8)")
    parser.add_argument("--parts", default="speed,loader", help="comma-separated: speed, loader")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if set(parts) - {"speed", "loader"}:
        parser.error(f"unknown parts {sorted(set(parts) - {'speed', 'loader'})}; choose from speed, loader")
    rows = []
    if "speed" in parts:
        rows += speed(load_model(args.model, device="cpu"))
    if "loader" in parts:
        rows += loader(args.model, args.batches)
    report("augment", rows, ["case", "images_per_s", "ms_per_batch", "load_1min", "note"])


if __name__ == "__main__":
    main()
