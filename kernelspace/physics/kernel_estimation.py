"""Estimating a PSF field from a sharp/blurry pair: non-negative least squares, solved by projected FISTA.

Given both images the blur is a linear inverse problem that physics solves well, so no network is needed
here: find the field of PSFs (each non-negative, summing to one) whose space-varying blur of the sharp image
best matches the blurry image, on image gradients (better conditioned than intensities) and only where the
model is valid — away from the image border (whose outside the camera saw but we did not) and from clipped
highlights. A small Tikhonov term keeps the problem well posed in flat regions.

Two solvers:

- :func:`fast_psf_field` fits each cell on its own, on its bilinear window of the image, through kernel-sized
  normal equations (:func:`cell_normal_equations`: the gradients' auto- and cross-correlations, a few FFTs per
  cell), then solves them all at once in kernel-sized arrays; flat cells lean on the image's pooled kernel. Its
  cost hardly depends on the PSF's size and is a fraction of one blur per iteration.
- :func:`estimate_psf_field` solves the coupled problem exactly (the blended field that re-blurs best), with a
  blur and its adjoint per iteration: slower, and a fraction of a dB better where the blur varies fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blur import fft_size
from .eff import TILE_BYTES, _frame_windows, blur_adjoint, blur_from_spectra, patch_spectra

__all__ = [
    "cell_normal_equations", "estimate_psf_field", "fast_psf_field", "pooled_psf", "project_simplex",
    "solve_normal_equations",
]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each trailing (S, S) block of ``v`` onto {p >= 0, sum p = 1}.

    The projection is ``max(v - theta, 0)`` with the threshold ``theta`` where its sum is 1: a piecewise linear,
    decreasing, convex function of ``theta``, whose root Newton's method reaches exactly once the set of entries
    above the threshold stops changing: 5-7 steps of a few vector operations for a kernel with a few hundred
    non-zero entries, 2-3x faster than sorting every block (the textbook way).

    Example:
        >>> v = torch.tensor([[[0.5, 0.8], [-0.2, 0.1]]])
        >>> project_simplex(v)
        tensor([[[0.3500, 0.6500],
                 [0.0000, 0.0000]]])
    """
    return _project_simplex(v)[0]


def _project_simplex(v: torch.Tensor, theta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`project_simplex` and its thresholds (N, 1), from a guess ``theta`` of them (an iterative solver's
    previous ones: its iterates move little, so 2-3 steps then suffice)."""
    shape = v.shape
    flat = v.reshape(-1, shape[-2] * shape[-1])
    # Both are below the root: the largest entry alone sums to 1 above max - 1, all of them at the mean.
    top = flat.amax(1, keepdim=True)
    below = torch.maximum(top - 1, (flat.sum(1, keepdim=True) - 1) / flat.shape[1])
    # From below the root, Newton's steps rise to it; from above (a guess under the largest entry), the first
    # step lands below it: the function is convex, its tangents lie under it.
    theta = below if theta is None else torch.where(theta < top, theta, below)
    count = None
    for _ in range(flat.shape[1] + 1):  # each step after the first drops at least one entry
        above = (flat - theta).clamp_min(0)
        new_count = (above > 0).sum(1, keepdim=True)
        if count is not None and torch.equal(new_count, count):
            break
        theta = theta + (above.sum(1, keepdim=True) - 1) / new_count
        count = new_count
    else:
        above = (flat - theta).clamp_min(0)
    return above.reshape(shape), theta


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical differences, stacked as channels, on the (H - 1, W - 1) grid."""
    return torch.cat([x[..., 1:, 1:] - x[..., 1:, :-1], x[..., 1:, 1:] - x[..., :-1, 1:]], 1)


def _fit_mask(blurry: torch.Tensor, r: int, valid: tuple[int, int] | None, saturation: float) -> torch.Tensor:
    """(B, 1, H, W): 1 where the blur model holds at a pixel: ``r`` or more inside the real image, and no channel
    of ``blurry`` clipped."""
    b, _, height, width = blurry.shape
    vh, vw = valid or (height, width)
    mask = torch.zeros(b, 1, height, width, device=blurry.device, dtype=blurry.dtype)
    mask[..., r : vh - r, r : vw - r] = 1.0
    return mask * (blurry.amax(1, keepdim=True) < saturation)


def cell_normal_equations(
    sharp: torch.Tensor,
    blurry: torch.Tensor,
    *,
    cell: int,
    psf_size: int,
    valid: tuple[int, int] | None = None,
    saturation: float = 0.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cell's least squares problem for its PSF, in kernel-sized arrays.

    Cell ``c`` is fitted on the image under its bilinear window ``w_c`` (the window the blur blends its PSF
    with): ``sum_p w_c(p) mask(p) (grad sharp (*) psf_c - grad blurry)(p)^2``, summed over both gradient
    directions and the channels. Its normal matrix is Toeplitz up to the window's own shift (neglected), so it
    is the windowed gradients' autocorrelation over offsets ``[-2r, 2r]^2``; the right-hand side is their
    cross-correlation with the blurry gradients over ``[-r, r]^2``.

    Args:
        sharp: (B, C, H, W) linear-light sharp image, sides multiples of ``cell``.
        blurry: the blurry image, same shape.
        cell: pixels per PSF cell.
        psf_size: S, the (odd) side of each PSF.
        valid: (height, width) of the real image inside padded inputs; only that part is fitted.
        saturation: blurry pixels at or above this (in any channel) are left out.

    Returns:
        ``(auto, cross)``: (B, H/cell, W/cell, 4r + 1, 4r + 1) and (B, H/cell, W/cell, S, S), ``r = S // 2``.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 64, 64)
        >>> auto, cross = cell_normal_equations(x, x, cell=32, psf_size=5)
        >>> tuple(auto.shape), tuple(cross.shape)
        ((1, 2, 2, 9, 9), (1, 2, 2, 5, 5))
        >>> bool(cross[0, 0, 0].argmax() == 12)  # an unblurred pair correlates best at offset 0
        True
    """
    b, _, height, width = sharp.shape
    if height % cell or width % cell:
        raise ValueError(f"image sides ({height}, {width}) must be multiples of the cell size {cell}")
    gh, gw, r = height // cell, width // cell, psf_size // 2
    # Gradients on the image grid (index = the pixel they end at; row and column 0 are zero and masked).
    g = F.pad(_gradients(sharp), (1, 0, 1, 0))
    target = F.pad(_gradients(blurry), (1, 0, 1, 0))
    weight = _fit_mask(blurry, max(r, 1), valid, saturation)
    # A cell's window spans a cell and a half on each side of its centre; its patch adds 2r for the offsets.
    margin, patch = cell // 2 + 2 * r, 2 * cell + 4 * r
    n = fft_size(patch)
    wy, wx = (_frame_windows(length, cells, cell, margin, 0, sharp.device, sharp.dtype)
              .unfold(1, patch, cell).diagonal(0, 0, 1).T for length, cells in ((height, gh), (width, gw)))
    pad = (margin, margin, margin, margin)
    g, target, weight = F.pad(g, pad), F.pad(target, pad), F.pad(weight, pad)
    auto = torch.empty(b, gh, gw, 4 * r + 1, 4 * r + 1, device=sharp.device, dtype=sharp.dtype)
    cross = torch.empty(b, gh, gw, psf_size, psf_size, device=sharp.device, dtype=sharp.dtype)
    # A band of cell rows at a time: the patches' spectra of a large image would not fit in memory at once.
    per_row = 6 * b * g.shape[1] * gw * n * n * sharp.element_size()
    rows = max(1, min(gh, TILE_BYTES // max(per_row, 1)))
    for top in range(0, gh, rows):
        band = slice(top, min(top + rows, gh))
        span = slice(band.start * cell, (band.stop - 1) * cell + patch)
        # (B, ch, rows, gw, patch, patch) views of the band's patches
        w, pg, pt = (a[..., span, :].unfold(2, patch, cell).unfold(3, patch, cell) for a in (weight, g, target))
        w = w * (wy[band, None, :, None] * wx[None, :, None, :])
        g_hat = torch.fft.rfft2(pg, s=(n, n))
        a = torch.fft.irfft2((torch.fft.rfft2(w * pg, s=(n, n)).conj() * g_hat).sum(1), s=(n, n))
        c = torch.fft.irfft2((torch.fft.rfft2(w * pt, s=(n, n)).conj() * g_hat).sum(1), s=(n, n))
        auto[:, band], cross[:, band] = _lags(a, c, r)
    return auto, cross


def _curvature(auto: torch.Tensor) -> torch.Tensor:
    """The largest eigenvalue of each normal matrix with Toeplitz rows ``auto`` (N..., 4r + 1, 4r + 1), shaped
    (N..., 1, 1): the peak of its spectrum."""
    return torch.fft.rfft2(auto, s=[2 * k for k in auto.shape[-2:]]).abs().amax((-2, -1), keepdim=True)


def _lags(auto: torch.Tensor, cross: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full circular correlations (..., n, n) -> the autocorrelation over offsets [-2r, 2r]^2, made exactly
    symmetric, and the cross-correlation over [-r, r]^2."""
    auto = auto.roll((2 * r, 2 * r), (-2, -1))[..., : 4 * r + 1, : 4 * r + 1]
    return 0.5 * (auto + auto.flip(-2, -1)), cross.roll((r, r), (-2, -1))[..., : 2 * r + 1, : 2 * r + 1]


def _toeplitz(auto: torch.Tensor):
    """``k -> A k`` for the normal matrices whose Toeplitz rows are ``auto`` (N..., 4r + 1, 4r + 1): the valid part
    of ``auto (*) k`` by FFT; its wrap-around at this FFT size falls outside the part kept."""
    shape = (fft_size(auto.shape[-2]),) * 2
    auto_hat = torch.fft.rfft2(auto, s=shape)
    size = (auto.shape[-1] + 1) // 2

    def apply(k: torch.Tensor) -> torch.Tensor:
        full = torch.fft.irfft2(auto_hat * torch.fft.rfft2(k, s=shape), s=shape)
        return full[..., size - 1 : 2 * size - 1, size - 1 : 2 * size - 1]

    return apply


def solve_normal_equations(
    auto: torch.Tensor,
    cross: torch.Tensor,
    init: torch.Tensor,
    *,
    tikhonov: float | torch.Tensor,
    iterations: int,
    simplex: bool = True,
    anchor: torch.Tensor | None = None,
    anchor_weight: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """argmin_k 1/2 k' A k - cross' k + tikhonov/2 ||k||^2 + anchor_weight/2 ||k - anchor||^2 by projected FISTA,
    over k on the simplex (``simplex``: non-negative, summing to one) or only non-negative; ``A`` is the
    convolution with ``auto``. Batched over the leading dimensions (N..., 4r + 1, 4r + 1) / (N..., S, S); the
    weights broadcast against ``(N..., 1, 1)``.

    Non-negativity inside the solve matters: clamping an unconstrained solution afterwards leaves a wide, noisy
    skirt. ``A k`` is the valid part of ``auto (*) k``, by FFT: direct convolution costs S^4 per iteration
    (minutes for a 141-px kernel), the FFT of the (2S - 1)-px autocorrelation a few milliseconds.
    """
    shrink = torch.as_tensor(tikhonov, dtype=auto.dtype, device=auto.device) + anchor_weight
    step = 1.0 / (_curvature(auto) + shrink)
    pull = step * (cross if anchor is None else cross + anchor_weight * anchor)
    # The shrinkage is the Toeplitz rows' centre, and the step scales them: one FFT product per iteration
    # gives step * (A + shrink) z.
    centre = torch.zeros_like(auto[(0,) * (auto.ndim - 2)])
    centre[auto.shape[-2] // 2, auto.shape[-1] // 2] = 1.0
    apply = _toeplitz(step * (auto + shrink * centre))
    k = z = init.clone()
    theta = None
    t = 1.0
    for _ in range(iterations):
        v = z - apply(z) + pull
        k_next, theta = _project_simplex(v, theta) if simplex else (v.clamp_min(0), None)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = torch.lerp(k, k_next, 1 + (t - 1) / t_next)  # k_next + (t - 1) / t_next * (k_next - k)
        k, t = k_next, t_next
    return k


def pooled_psf(
    auto: torch.Tensor, cross: torch.Tensor, *, iterations: int = 50, tikhonov: float = 1e-4
) -> torch.Tensor:
    """The image's pooled kernel (B, 1, 1, S, S) from its cells' equations (:func:`cell_normal_equations`) summed:
    the best uniform blur, on the simplex; ``tikhonov`` is relative to the problem's curvature."""
    auto, cross = auto.sum((1, 2), keepdim=True), cross.sum((1, 2), keepdim=True)
    r = cross.shape[-1] // 2
    delta = torch.zeros_like(cross)
    delta[..., r, r] = 1.0
    return solve_normal_equations(auto, cross, delta, tikhonov=tikhonov * _curvature(auto), iterations=iterations)


def fast_psf_field(
    sharp: torch.Tensor,
    blurry: torch.Tensor,
    *,
    cell: int,
    psf_size: int,
    valid: tuple[int, int] | None = None,
    iterations: int = 50,
    tikhonov: float = 1e-4,
    coupling: float = 0.05,
    saturation: float = 0.99,
    steps: int = 3,
    step_iterations: int = 20,
    equations: tuple[torch.Tensor, torch.Tensor] | None = None,
    pooled: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """The PSF field (B, H/cell, W/cell, S, S) fitted cell by cell (:func:`cell_normal_equations`), then corrected.

    First the image's pooled kernel (:func:`pooled_psf`), then each cell's own, pulled towards the pooled one by
    ``coupling`` x the image's mean curvature: a cell with few edges of its own (sky, a wall) takes the image's
    blur instead of a guess. Fitting the overlapping windows apart is biased where the blur varies, and the
    Toeplitz normal matrices neglect the mask's edges, so ``steps`` corrections follow on the coupled problem
    that :func:`estimate_psf_field` solves: each takes its exact gradient (one blur and its adjoint) and steps by
    the cells' own normal matrices (the blocks on the diagonal of its Hessian, 1.2x for safety), on the simplex,
    in ``step_iterations``. Three such steps did better on Levin and GoPro pairs than thirty of
    :func:`estimate_psf_field`'s (whose step is sized for the whole Hessian); five add under 0.15 dB there.

    ``equations`` and ``pooled``, when given, are this pair's :func:`cell_normal_equations` and
    :func:`pooled_psf` already computed (a caller comparing several camera responses has them). ``init``, a field
    from elsewhere (a learned extractor's), replaces the pooled and cell-by-cell fits: only the corrections run.

    Example:
        >>> import torch
        >>> from kernelspace.physics.eff import space_varying_blur
        >>> x = torch.rand(1, 1, 64, 64)
        >>> psf = torch.zeros(1, 2, 2, 5, 5); psf[..., 2, 1:4] = 1 / 3  # a 3-px horizontal blur everywhere
        >>> est = fast_psf_field(x, space_varying_blur(x, psf, 32), cell=32, psf_size=5)
        >>> bool((est - psf).abs().max() < 0.02)
        True
    """
    if equations is None:
        equations = cell_normal_equations(sharp, blurry, cell=cell, psf_size=psf_size, valid=valid,
                                          saturation=saturation)
    auto, cross = equations
    gh, gw = cross.shape[1:3]
    # The weights are relative to the curvature of each cell's problem (its largest eigenvalue).
    share = _curvature(auto.sum((1, 2), keepdim=True)) / (gh * gw)
    if init is not None:
        psf = init
    else:
        if pooled is None:
            pooled = pooled_psf(auto, cross, iterations=iterations, tikhonov=tikhonov)
        psf = pooled.expand_as(cross)
        if gh * gw > 1:
            psf = solve_normal_equations(auto, cross, psf, tikhonov=tikhonov * share, iterations=iterations,
                                         anchor=pooled, anchor_weight=coupling * share)
    if steps:
        normal, rhs = _coupled_problem(sharp, blurry, cell, psf_size, valid, saturation)
        hessian = 1.2 * auto
        local = _toeplitz(hessian)
        for _ in range(steps):
            # The local model 1/2 d' T d + grad' d of d = new - psf is the normal equations T new = T psf - grad;
            # the pull towards psf keeps a cell without edges (T about 0) where it is.
            gradient = normal(psf) - rhs
            psf = solve_normal_equations(hessian, local(psf) - gradient, psf, tikhonov=0.0,
                                         iterations=step_iterations, anchor=psf, anchor_weight=coupling * share)
    return psf


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
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    return _fista(sharp, blurry, cell, psf_size, valid, iterations, tikhonov, saturation, init)


def _gradients_adjoint(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_gradients`: (B, 2C, H - 1, W - 1) -> (B, C, H, W)."""
    gx, gy = g.chunk(2, 1)
    x = F.pad(gx + gy, (1, 0, 1, 0))
    x[..., 1:, :-1] -= gx
    x[..., :-1, 1:] -= gy
    return x


def _coupled_problem(sharp, blurry, cell, psf_size, valid, saturation):
    """The coupled least squares ``1/2 psf' N psf - rhs' psf`` (on masked gradients) as ``(psf -> N psf, rhs)``."""
    spec = patch_spectra(sharp, cell, psf_size)
    mask = _fit_mask(blurry, psf_size // 2, valid, saturation)[..., 1:, 1:]

    def normal(psf: torch.Tensor) -> torch.Tensor:
        # N psf by the blur's explicit adjoint (autograd through the FFTs and the fold costs more).
        return blur_adjoint(spec, _gradients_adjoint(_gradients(blur_from_spectra(spec, psf)) * mask))

    return normal, blur_adjoint(spec, _gradients_adjoint(_gradients(blurry) * mask))


@torch.no_grad()
def _fista(sharp, blurry, cell, psf_size, valid, iterations, tikhonov, saturation, init) -> torch.Tensor:
    b, _, height, width = sharp.shape
    gh, gw = height // cell, width // cell
    r = psf_size // 2
    normal, rhs = _coupled_problem(sharp, blurry, cell, psf_size, valid, saturation)
    # Largest eigenvalue of A^T A by power iteration, from the same start for every image: an image's estimate does
    # not depend on the batch it came in.
    gen = torch.Generator(device=sharp.device).manual_seed(0)
    v = torch.rand(1, gh, gw, psf_size, psf_size, device=sharp.device, dtype=sharp.dtype, generator=gen).repeat(b, 1, 1, 1, 1)
    lipschitz = torch.ones(b, device=sharp.device, dtype=sharp.dtype)
    for _ in range(12):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1, 1, 1)
        av = normal(v)
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
        x_new = project_simplex(z - step * (normal(z) - rhs + lam * z))
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x_prev)
        x_prev, t = x_new, t_new
    return x_prev
