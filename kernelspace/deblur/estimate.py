"""Blind estimation of a uniform PSF from a blurry image alone: coarse to fine, an L0 edge image, NNLS kernels.

The classic recipe that works (Xu, Zheng & Jia 2013; Pan et al. 2014): at each scale of an image pyramid,
alternate

1. an intermediate image with an L0 prior on its gradients: piecewise flat, keeping only the strong edges,
   which are what constrains the blur (fine texture and noise would pull the kernel towards a delta);
2. the kernel that best turns that image into the blurry one: non-negative least squares on gradients, only on
   the outputs the camera recorded (:func:`kernelspace.physics.kernel_estimation.estimate_psf_field`), then
   small taps set to zero and the rest projected back to a PSF.

The L0 weight decreases over the iterations so that finer edges join as the kernel gets better. The kernel of
each scale, upsampled, starts the next one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..physics.kernel_estimation import estimate_psf_field, project_simplex
from .nonblind import deconvolve

__all__ = ["fit_psf", "estimate_psf"]


def fit_psf(
    latent_canvas: torch.Tensor,
    blurry: torch.Tensor,
    size: int,
    *,
    init: torch.Tensor | None = None,
    iterations: int = 100,
    tikhonov: float = 1e-4,
) -> torch.Tensor:
    """The (size, size) PSF that turns a sharp canvas into ``blurry`` (both linear light; NNLS on gradients).

    Args:
        latent_canvas: (B, C, H + 2r, W + 2r) the sharp image with the ``r = size // 2`` pixels around the frame
            that the blur mixed in (as :func:`~kernelspace.deblur.nonblind.deconvolve` returns with ``canvas=True``;
            extra rows/columns at the bottom/right are ignored).
        blurry: (B, C, H, W).
        size: the PSF's side (odd).
        init: a starting PSF (size, size).
        iterations: projected FISTA iterations.
        tikhonov: weight of the PSF's squared norm (relative).

    Returns:
        One PSF for the whole batch, (size, size), non-negative and summing to one.
    """
    r = size // 2
    b, c, h, w = blurry.shape
    hc, wc = h + 2 * r, w + 2 * r
    side = max(hc, wc) + max(hc, wc) % 2  # one square cell: the field solver then fits a single PSF
    sharp = torch.zeros(b, c, side, side, dtype=blurry.dtype, device=blurry.device)
    sharp[..., :hc, :wc] = latent_canvas[..., :hc, :wc]
    target = torch.zeros_like(sharp)
    target[..., r : r + h, r : r + w] = blurry
    start = None if init is None else init.to(sharp).expand(b, 1, 1, size, size)
    psf = estimate_psf_field(
        sharp, target, cell=side, psf_size=size, valid=(hc, wc), iterations=iterations, tikhonov=tikhonov,
        saturation=math.inf, init=start,
    )
    return psf.mean((0, 1, 2))


def _clean(psf: torch.Tensor, keep: float) -> torch.Tensor:
    """Zero the taps under ``keep`` x the largest one (noise the least squares fitted) and renormalise."""
    psf = torch.where(psf >= keep * psf.max(), psf, torch.zeros_like(psf))
    return psf / psf.sum()


def _resize_psf(psf: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(psf[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return project_simplex(out)


def estimate_psf(
    blurry: torch.Tensor,
    size: int,
    *,
    scale_step: float = math.sqrt(2),
    coarsest: int = 5,
    iterations: int = 5,
    edge_weight: float = 4e-3,
    min_edge_weight: float = 1e-3,
    latent_iterations: int = 30,
    kernel_iterations: int = 60,
    keep: float = 0.05,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """A uniform PSF (size, size) for ``blurry`` (B, C, H, W, linear light) from the image alone.

    Args:
        blurry: the blurry image(s); channels and batch share one PSF (their mean is used).
        size: the PSF's side (odd); as long as the longest blur expected, not much more.
        scale_step: the ratio between pyramid levels.
        coarsest: the PSF side at the coarsest level.
        iterations: image/kernel alternations per level.
        edge_weight: the L0 weight on the intermediate image's gradients at the first alternation.
        min_edge_weight: the floor it decreases to (by 1.1x per alternation).
        latent_iterations: ADMM iterations of each intermediate image.
        kernel_iterations: FISTA iterations of each kernel fit.
        keep: taps under this fraction of the largest are zeroed.
        on_step: called after each alternation (progress bars).
    """
    grey = blurry.mean((0, 1), keepdim=True)
    levels = max(1, 1 + math.ceil(math.log(size / coarsest) / math.log(scale_step)))
    psf = None
    weight = edge_weight
    for level in reversed(range(levels)):
        scale = scale_step**-level
        ks = max(3, int(round(size * scale)) // 2 * 2 + 1) if level else size
        h, w = (max(8, round(n * scale)) for n in grey.shape[-2:])
        y = F.interpolate(grey, size=(h, w), mode="bilinear", antialias=True, align_corners=False) if level else grey
        if psf is None:
            psf = torch.zeros(ks, ks, dtype=grey.dtype, device=grey.device)
            psf[ks // 2, ks // 2 - 1 : ks // 2 + 2] = 1 / 3  # a short blur: a delta would be a fixed point
            psf = psf + psf.T
            psf = psf / psf.sum()
        else:
            psf = _resize_psf(psf, ks)
        for _ in range(iterations):
            latent = deconvolve(y, psf, weight=weight, alpha=0.0, iterations=latent_iterations, canvas=True)
            psf = _clean(fit_psf(latent, y, ks, init=psf, iterations=kernel_iterations), keep)
            weight = max(weight / 1.1, min_edge_weight)
            if on_step is not None:
                on_step()
    return psf
