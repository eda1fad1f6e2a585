"""Estimating a PSF field from a sharp/blurry pair: non-negative least squares, solved by projected FISTA.

Given both images the blur is a linear inverse problem that physics solves well, so no network is needed
here: find the field of PSFs (each non-negative, summing to one) whose space-varying blur of the sharp image
best matches the blurry image, on image gradients (better conditioned than intensities) and only where the
model is valid — away from the image border (whose outside the camera saw but we did not) and from clipped
highlights. A small Tikhonov term keeps the problem well posed in flat regions.
"""

from __future__ import annotations

import torch

from .eff import blur_from_spectra, patch_spectra

__all__ = ["estimate_psf_field", "project_simplex"]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each trailing (S, S) block of ``v`` onto {p >= 0, sum p = 1}."""
    shape = v.shape
    flat = v.reshape(-1, shape[-2] * shape[-1])
    u, _ = torch.sort(flat, dim=1, descending=True)
    css = u.cumsum(1) - 1
    idx = torch.arange(1, flat.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / idx) > 0).to(v.dtype).cumsum(1).argmax(1, keepdim=True)
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (flat - theta).clamp_min(0).reshape(shape)


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical differences, stacked as channels, on the (H - 1, W - 1) grid."""
    return torch.cat([x[..., 1:, 1:] - x[..., 1:, :-1], x[..., 1:, 1:] - x[..., :-1, 1:]], 1)


def estimate_psf_field(
    sharp: torch.Tensor,
    blurry: torch.Tensor,
    *,
    cell: int,
    psf_size: int,
    valid: tuple[int, int] | None = None,
    iterations: int = 200,
    tikhonov: float = 1e-4,
    saturation: float = 0.99,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """The PSF field (B, H/cell, W/cell, S, S) that best turns ``sharp`` into ``blurry`` (both linear light).

    Args:
        sharp: (B, C, H, W) linear-light sharp image, sides multiples of ``cell``.
        blurry: the blurry image, same shape.
        cell: pixels per PSF cell.
        psf_size: S, the (odd) side of each PSF.
        valid: (height, width) of the real image inside padded inputs; only that part is fitted.
        iterations: FISTA iterations.
        tikhonov: weight of ||psf||^2 relative to the largest eigenvalue of the data term.
        saturation: blurry pixels at or above this (in any channel) are left out, as clipping broke linearity.
        init: a starting field (for instance a coarser estimate); a centred delta by default.
    """
    # The solver differentiates its own data term, also when the caller runs under inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        return _fista(sharp.clone(), blurry.clone(), cell, psf_size, valid, iterations, tikhonov, saturation, init)


def _fista(sharp, blurry, cell, psf_size, valid, iterations, tikhonov, saturation, init) -> torch.Tensor:
    b, _, height, width = sharp.shape
    gh, gw = height // cell, width // cell
    r = psf_size // 2
    vh, vw = valid or (height, width)
    with torch.no_grad():
        spec = patch_spectra(sharp, cell, psf_size)
        mask = torch.zeros(b, 1, height, width, device=sharp.device, dtype=sharp.dtype)
        mask[..., r : vh - r, r : vw - r] = 1.0
        mask = mask * (blurry.amax(1, keepdim=True) < saturation)
        mask = mask[..., 1:, 1:]
        target = _gradients(blurry)

    def grad_of(psf: torch.Tensor) -> torch.Tensor:
        p = psf.detach().requires_grad_()
        residual = (_gradients(blur_from_spectra(spec, p)) - target) * mask
        loss = 0.5 * residual.square().sum()
        return torch.autograd.grad(loss, p)[0]

    # Largest eigenvalue of A^T A by power iteration (A is linear in the PSFs: A^T A v = grad(v) - grad(0)).
    g0 = grad_of(torch.zeros(b, gh, gw, psf_size, psf_size, device=sharp.device, dtype=sharp.dtype))
    gen = torch.Generator(device=sharp.device).manual_seed(0)  # deterministic estimates
    v = torch.rand(b, gh, gw, psf_size, psf_size, device=sharp.device, dtype=sharp.dtype, generator=gen)
    lipschitz = torch.ones(b, device=sharp.device, dtype=sharp.dtype)
    for _ in range(12):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1, 1, 1)
        av = grad_of(v) - g0
        lipschitz = (av * v).flatten(1).sum(1).clamp_min(1e-12)
        v = av
    lam = tikhonov * lipschitz.view(b, 1, 1, 1, 1)
    step = 1.0 / (lipschitz.view(b, 1, 1, 1, 1) * (1 + tikhonov))

    if init is None:
        init = torch.zeros(b, gh, gw, psf_size, psf_size, device=sharp.device, dtype=sharp.dtype)
        init[..., r, r] = 1.0
    x_prev = init.clone()
    z = x_prev
    t = 1.0
    for _ in range(iterations):
        x_new = project_simplex(z - step * (grad_of(z) + lam * z))
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x_prev)
        x_prev, t = x_new, t_new
    return x_prev
