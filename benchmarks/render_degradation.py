"""A picture of the degradation chain for the docs: augmented crops beside crops of real blurry photos.

    python benchmarks/render_degradation.py [--model SOURCE] [--out docs/img/augmentation/chain.png]

Row 1: four clean photos from ../shared/data/train blurred by ``KernelSpaceAugment`` (kernels from the default
model's prior). Row 2: the same kernels (the same seed: the chain's parameters are drawn after the blur's) with
the full chain, noise and JPEG on every crop. Row 3: real blur, two GoPro frames (Nah et al. 2017) and two
Levin 2009 photos. Every crop is 128x128, shown at 1:1 so that noise and JPEG look as a network sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from common import picture_args

from kernelspace import Degradation, KernelSpaceAugment, load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIDE, GAP, LABEL = 128, 4, 16
# (file, left, top) of each crop: textured regions, picked by eye once.
CLEAN = [("train/cbsd68/101085.png", 60, 120), ("train/mcmaster18/1.tif", 180, 200),
         ("train/urban100_30/img_004.png", 300, 200), ("train/live1/bikes.bmp", 300, 250)]
REAL = [("eval/gopro_pairs6/blur/00.png", 560, 300), ("eval/gopro_pairs6/blur/03.png", 600, 260),
        ("eval/levin2009/blur/im1_kernel2_img.png", 64, 64), ("eval/levin2009/blur/im3_kernel5_img.png", 64, 64)]


def _crop(name: str, left: int, top: int) -> np.ndarray:
    image = Image.open(DATA / name).convert("RGB")
    return np.asarray(image.crop((left, top, left + SIDE, top + SIDE)))


def _row(crops: list[np.ndarray]) -> np.ndarray:
    gap = np.full((SIDE, GAP, 3), 255, np.uint8)
    return np.concatenate([part for c in crops for part in (c, gap)][:-1], 1)


def main() -> None:
    args = picture_args(__doc__, "docs/img/augmentation/chain.png")
    model = load_model(args.model, device="cpu")
    clean = torch.from_numpy(np.stack([_crop(*c) for c in CLEAN])).permute(0, 3, 1, 2).float() / 255
    blur = KernelSpaceAugment(p=1.0, model=model)
    chain = KernelSpaceAugment(p=1.0, model=model, degradation=Degradation(p_jpeg=1.0))
    rows = {}
    for title, aug in (("kernel-space blur only", blur), ("blur + sensor noise + JPEG (Degradation(p_jpeg=1))", chain)):
        out = aug(clean, generator=torch.Generator().manual_seed(3))
        rows[title] = [(t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in out]
    rows["real blur: GoPro 00 and 03, Levin 2009 im1 kernel 2 and im3 kernel 5"] = [_crop(*c) for c in REAL]
    width = 4 * SIDE + 3 * GAP
    picture = Image.new("RGB", (width, len(rows) * (SIDE + LABEL)), "white")
    draw = ImageDraw.Draw(picture)
    for i, (title, crops) in enumerate(rows.items()):
        top = i * (SIDE + LABEL)
        draw.text((2, top + 2), title, fill="black")
        picture.paste(Image.fromarray(_row(crops)), (0, top + LABEL))
    q = chain._params["jpeg_quality"].tolist()
    print("chain: JPEG qualities", q, "shot", [f"{v:.1e}" for v in chain._params["noise_shot"].tolist()],
          "read", [f"{v:.1e}" for v in chain._params["noise_read"].tolist()])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {Path(args.out).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
