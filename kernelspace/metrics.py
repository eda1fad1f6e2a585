"""Image quality scores, including the standard Levin et al. protocol (best sub-pixel shift, cropped border).

Blur moves content by a few pixels (a PSF's centre of mass is rarely at its centre), so deblurring and
re-blurring results are scored after the best shift: integer shifts up to ``max_shift`` pixels, then a
refinement in ``step``-pixel steps with bilinear interpolation, on the reference cropped by ``crop`` pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["charbonnier", "psnr", "ssim", "shift", "aligned"]


def charbonnier(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean Charbonnier distance ``sqrt((a - b)^2 + eps^2)``: the paper's training loss (a smooth L1), differentiable.

    Example:
        >>> import torch
        >>> round(float(charbonnier(torch.zeros(4), torch.full((4,), 0.5))), 4)
        0.5
    """
    return ((estimate - reference).square() + eps * eps).sqrt().mean()


def psnr(estimate: torch.Tensor, reference: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of ``estimate`` against ``reference`` (same shape, values in [0, peak])."""
    mse = (estimate.double() - reference.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def ssim(estimate: torch.Tensor, reference: torch.Tensor, peak: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) over channels, for (B, C, H, W)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).to(estimate.device)
    window = (g[:, None] * g[None, :]).expand(estimate.shape[1], 1, 11, 11)
    x, y = estimate.double(), reference.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=t.shape[1])

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean().item()


def shift(img: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """``img`` (B, C, H, W) translated by (dy, dx) pixels with bilinear interpolation (border replicated)."""
    b, _, h, w = img.shape
    ys = torch.arange(h, dtype=img.dtype, device=img.device) - dy
    xs = torch.arange(w, dtype=img.dtype, device=img.device) - dx
    gy, gx = torch.meshgrid(2 * ys / (h - 1) - 1, 2 * xs / (w - 1) - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(b, h, w, 2)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def aligned(
    estimate: torch.Tensor, reference: torch.Tensor, *, crop: int = 15, max_shift: int = 10, step: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, reference) cropped by ``crop`` px after the shift of ``estimate`` that minimises the error."""
    est = estimate.double()
    h, w = reference.shape[-2:]

    def inner(t: torch.Tensor) -> torch.Tensor:
        return t[..., crop : h - crop, crop : w - crop]

    target = inner(reference.double())

    def error(moved: torch.Tensor) -> float:
        return (inner(moved) - target).square().mean().item()

    # Integer shifts first (a roll: its wrapped border falls inside the crop while max_shift <= crop), then
    # sub-pixel steps around the best one.
    span = range(-max_shift, max_shift + 1)
    best = min(((dy, dx) for dy in span for dx in span), key=lambda d: error(est.roll(d, (-2, -1))))
    n = int(round(1 / step))
    fine = [(best[0] + i * step, best[1] + j * step) for i in range(-n, n + 1) for j in range(-n, n + 1)]
    dy, dx = min(fine, key=lambda d: error(shift(est, *d)))
    return inner(shift(est, dy, dx)), target
