"""Pictures of a kernel space for the docs: real recorded kernels beside kernels drawn from the model's priors.

    python benchmarks/render_kernel_space.py [--model SOURCE] [--out docs/img/kernel_space/psf_samples.png]

Row 1: Levin 2009's eight recorded kernels (centred on the model's canvas). Row 2: the same kernels encoded and
decoded by the learned kernel space. Row 3: eight draws of the learned (latent) prior. Row 4: eight draws of the
camera-shake trajectory prior. Each PSF is drawn normalised to its peak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import picture_args

from kernelspace import load_model, render_kernel

LEVIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "levin2009" / "kernels"


def main() -> None:
    args = picture_args(__doc__, "docs/img/kernel_space/psf_samples.png")
    model = load_model(args.model, device="cpu")
    recorded = torch.cat([model.fit_canvas(torch.from_numpy(np.load(LEVIN / f"levin09_kernel{i}.npy")).float()[None])
                          for i in range(1, 9)])
    rows = [recorded]
    with torch.no_grad():
        coded = model.decode_kernel(model.encode_kernel(model.pack(recorded[:, None, None], torch.ones(8))), 1.0)
        rows.append(model.psf_field(coded)[:, 0, 0])
        for prior in ("latent", "trajectory"):
            model.prior = prior
            rows.append(model.psf_field(model.sample_kernel(128, 128, batch=8, seed=0))[:, 0, 0])
    grid = torch.stack(rows)  # (4, 8, S, S): render_kernel draws a PSF field as a grid
    picture = render_kernel(grid, fill=0.9)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"wrote {args.out} ({picture.width}x{picture.height})")


if __name__ == "__main__":
    main()
