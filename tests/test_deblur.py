"""Deblurring: the non-blind solver on real camera shake, and the kernel fit that blind estimation builds on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kernelspace.deblur import deconvolve, fit_psf
from kernelspace.metrics import aligned, psnr

from .conftest import DATA, need


def _levin(image: int, kernel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    root = need(DATA / "eval" / "levin2009")

    def load(path) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)[None, None]

    psf = torch.from_numpy(np.load(root / "kernels" / f"levin09_kernel{kernel}.npy")).float()
    if psf.shape[0] % 2 == 0:  # the solver takes odd sides; one zero row/column keeps the taps where they are
        psf = F.pad(psf, (0, 1, 0, 1))
    return load(root / "gt" / f"im{image}.png"), load(root / "blur" / f"im{image}_kernel{kernel}_img.png"), psf


def test_deconvolve_with_recorded_kernel_beats_blurry_levin():
    sharp, blurry, psf = _levin(1, 1)
    restored = deconvolve(blurry, psf)
    gain = psnr(*aligned(restored, sharp)) - psnr(*aligned(blurry, sharp))
    assert restored.shape == blurry.shape
    assert gain > 8.0, f"non-blind deconvolution gained only {gain:.2f} dB"  # measured: about 10 dB


def test_deconvolve_batch_with_one_psf_per_image_matches_single_calls():
    sharp, blurry, psf = _levin(2, 3)
    crop = blurry[..., :64, :80]
    batch = torch.cat([crop, crop.flip(-1)])
    psfs = torch.stack([psf, psf.flip(-1)])
    together = deconvolve(batch, psfs, iterations=20)
    for i in range(2):
        alone = deconvolve(batch[i : i + 1], psfs[i], iterations=20)
        assert torch.allclose(together[i : i + 1], alone, atol=1e-5)


def test_fit_psf_recovers_a_kernel_from_a_real_photo(photo):
    sharp = torch.from_numpy(photo[:120, :130].mean(-1, dtype=np.float32) / 255)[None, None]
    psf = torch.zeros(15, 15)
    psf[7, 3:12] = 1.0
    psf[3:8, 11] = 1.0
    psf /= psf.sum()
    blurry = F.conv2d(sharp, psf[None, None])  # the valid part only: no border assumption in the data
    estimate = fit_psf(sharp, blurry, 15, iterations=300)
    assert (estimate - psf).abs().sum() < 0.15  # L1 distance between two PSFs is at most 2
    assert abs(float(estimate.sum()) - 1.0) < 1e-4 and bool((estimate >= 0).all())


def test_render_kernel_draws_each_cell_psf_at_its_centre(levin_pair):
    from kernelspace import KernelField
    from kernelspace.viz import render_kernel

    model = KernelField(cell=64, psf_size=9)
    sharp, _ = levin_pair
    kernel = model.sample_kernel(*sharp.shape, seed=3)  # 255x255 -> a 4x4 grid of 64-px cells
    picture = np.asarray(render_kernel(kernel, model, image=sharp))
    assert picture.shape == (255, 255, 3)
    plain = np.asarray(render_kernel(kernel, model))
    assert plain.shape == (256, 256, 3)
    # Every cell's centre region holds tinted (yellow: red > blue) pixels; the gaps between cells stay black.
    for i in range(4):
        for j in range(4):
            block = plain[i * 64 + 8 : i * 64 + 56, j * 64 + 8 : j * 64 + 56].astype(int)
            assert (block[..., 0] - block[..., 2] > 100).any()
    assert plain[:, ::64][:, 1:].max() == 0 and plain[::64][1:].max() == 0


def test_render_kernel_rejects_what_is_not_a_kernel():
    import pytest

    from kernelspace.viz import render_kernel

    with pytest.raises(TypeError, match="torch.Tensor"):
        render_kernel(np.zeros((9, 9)))
    with pytest.raises(ValueError, match="shape"):
        render_kernel(torch.zeros(3, 9, 9))
