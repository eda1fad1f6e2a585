"""Camera-shake point spread functions: random trajectories and their rasterisation.

Convention (used everywhere in kernelspace): a blurry image is PyTorch's cross-correlation of the sharp image,
in linear light, with the PSF::

    blurry = torch.nn.functional.conv2d(sharp_linear, psf[None, None])   # per channel, after padding

so ``psf[i, j]`` is the weight of the sharp pixel at offset ``(i - c, j - c)`` (rows, columns) from the output
pixel, with ``c = size // 2`` the canvas centre (``size`` is odd). A trajectory point ``(x, y)`` (pixels,
x to the right, y down) is the offset at which, at that instant of the exposure, the output pixel sees the
sharp image: it puts its weight on ``psf[c + y, c + x]``. The picture content therefore moves by ``-(x, y)``;
a PSF whose centre of mass is at ``(x, y)`` shifts the whole picture by ``-(x, y)`` on average.

Trajectories follow the camera-shake model of Boracchi & Foi (2012): a random walk with inertia whose
direction wanders under Gaussian acceleration, is pulled back towards its start (the photographer compensates)
and now and then reverses in an impulsive jerk; the speed also varies smoothly, so the PSF is brighter where
the camera lingered, as in recorded kernels. Each path is then scaled so that its extent (the longer side of
its bounding box) is drawn uniformly between ``min_extent`` and ``max_extent``, and shifted so that its centre of
mass sits at a random offset of up to ``max_offset`` pixels: real blurry/sharp pairs are offset by a few
pixels (Levin et al.'s recorded kernels have centres of mass up to about 4 px off their canvas centre), and a
model that never sees such offsets cannot reproduce them.
"""

from __future__ import annotations

import math

import torch

__all__ = ["shake_trajectory", "rasterize_psf", "random_psf", "psf_size_for", "fit_canvas"]


def _check_extents(min_extent: float, max_extent: float, max_offset: float) -> None:
    for name, value in (("min_extent", min_extent), ("max_extent", max_extent), ("max_offset", max_offset)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (pixels), got {value!r}")
    if min_extent > max_extent:
        raise ValueError(f"min_extent ({min_extent}) must not exceed max_extent ({max_extent})")


def psf_size_for(max_extent: float, max_offset: float = 0.0) -> int:
    """The smallest odd PSF canvas that holds every trajectory :func:`shake_trajectory` can return.

    A path lies within ``max_extent / 2 + max_offset`` pixels of the centre on each axis.

    Example:
        >>> psf_size_for(35.0, 5.0), psf_size_for(0.0)
        (47, 3)
    """
    _check_extents(0.0, max_extent, max_offset)
    # A small margin so that rounding (float32 positions) never pushes a point off the canvas.
    return 2 * math.ceil(max_extent / 2 + max_offset + 0.01) + 1


def fit_canvas(psf: torch.Tensor, size: int) -> torch.Tensor:
    """``(..., s, s)`` PSFs (s odd) centred on a ``size`` x ``size`` canvas (cropped or zero-padded), made
    non-negative and renormalised to sum to one.

    Example:
        >>> import torch
        >>> psf = torch.zeros(5, 5); psf[1, 3] = 2.0
        >>> out = fit_canvas(psf, 9)
        >>> tuple(out.shape), float(out[3, 5]), tuple(fit_canvas(out, 3).shape)
        ((9, 9), 1.0, (3, 3))
    """
    s = psf.shape[-1]
    if s > size:
        cut = (s - size) // 2
        psf = psf[..., cut : cut + size, cut : cut + size]
    elif s < size:
        psf = torch.nn.functional.pad(psf, [(size - s) // 2] * 4)
    psf = psf.clamp_min(0)
    return psf / psf.sum((-2, -1), keepdim=True).clamp_min(1e-12)


def _rotate(v: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    return torch.stack([v[..., 0], v[..., 1]], -1) * cos + torch.stack([-v[..., 1], v[..., 0]], -1) * sin


def shake_trajectory(
    generator: torch.Generator | None = None,
    n_steps: int = 128,
    max_extent: float = 35.0,
    min_extent: float = 3.0,
    max_offset: float = 5.0,
    *,
    batch: int | None = None,
) -> torch.Tensor:
    """A random camera-shake trajectory: sub-pixel positions over the exposure, equally spaced in time.

    Args:
        generator: the source of randomness (CPU); ``None`` uses PyTorch's global generator.
        n_steps: number of positions (>= 2); consecutive ones are joined by straight segments.
        max_extent: largest extent (longer side of the bounding box), pixels.
        min_extent: smallest extent, pixels; each path's extent is uniform in ``[min_extent, max_extent]``.
        max_offset: the centre of mass is drawn uniformly in a disc of this radius (pixels), then moved by the
            least amount that keeps the whole path within ``max_extent / 2 + max_offset`` of the centre on each
            axis (so that :func:`psf_size_for` always suffices).
        batch: ``None`` for one trajectory, or a number of independent trajectories.

    Returns:
        float32 ``(n_steps, 2)`` positions ``(x, y)`` in pixels, or ``(batch, n_steps, 2)``.

    Example:
        >>> import torch
        >>> path = shake_trajectory(torch.Generator().manual_seed(0), max_extent=20.0, min_extent=20.0)
        >>> tuple(path.shape), round(float((path.amax(0) - path.amin(0)).max()), 3)
        ((128, 2), 20.0)
    """
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ValueError(f"batch must be None or a positive integer, got {batch!r}")
    _check_extents(min_extent, max_extent, max_offset)
    b = 1 if batch is None else batch
    n = n_steps
    f64 = torch.float64

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=f64)

    # Every random number is drawn up front, in a fixed order, so a generator state fixes the result.
    wobble = 0.01 + 0.3 * uniform(b) ** 2  # std of the random acceleration, relative to the speed; mostly gentle
    pull = 0.3 * uniform(b) ** 2  # centripetal pull towards the start (relative to the path's scale)
    jerk_rate = 0.04 * uniform(b) ** 2  # probability per step of an impulsive reversal
    speed_std = 1.0 * uniform(b)  # how much the speed varies (log-normal)
    heading = 2 * math.pi * uniform(b)
    accel = torch.randn(b, n - 1, 2, generator=generator, dtype=f64)
    jerk_draw = uniform(b, n - 1)
    jerk_angle = math.pi + (uniform(b, n - 1) - 0.5)  # a reversal, give or take 30 degrees (as Boracchi & Foi)
    speed_noise = torch.randn(b, n, generator=generator, dtype=f64)
    extent = min_extent + (max_extent - min_extent) * uniform(b)
    offset_radius = max_offset * uniform(b).sqrt()  # sqrt: uniform over the disc's area
    offset_angle = 2 * math.pi * uniform(b)

    # Log-speed follows a smooth AR(1) process: the camera slows down (bright PSF spots) and speeds up.
    rho = 0.9
    log_speed = torch.empty(b, n, dtype=f64)
    log_speed[:, 0] = speed_noise[:, 0]
    for t in range(1, n):
        log_speed[:, t] = rho * log_speed[:, t - 1] + math.sqrt(1 - rho**2) * speed_noise[:, t]
    speed = torch.exp(speed_std[:, None] * log_speed)

    direction = torch.stack([torch.cos(heading), torch.sin(heading)], -1)
    scale = float(n) / 4  # positions are in units of the nominal step; the pull acts on this scale
    pos = torch.zeros(b, n, 2, dtype=f64)
    for t in range(n - 1):
        dv = wobble[:, None] * accel[:, t] - pull[:, None] * pos[:, t] / scale
        jerk = (jerk_draw[:, t] < jerk_rate)[:, None]
        dv = torch.where(jerk, dv + 2 * _rotate(direction, jerk_angle[:, t]), dv)
        direction = direction + dv
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        pos[:, t + 1] = pos[:, t] + direction * speed[:, t, None]

    # Scale to the drawn extent; a path that never moved stays a point.
    current = (pos.amax(1) - pos.amin(1)).amax(-1)
    pos = pos * torch.where(current > 0, extent / current.clamp_min(1e-12), torch.zeros_like(current))[:, None, None]

    # Centre of mass of the piecewise-linear path (segment midpoints, equal time each) at the drawn offset,
    # then the least shift that keeps the path inside the box psf_size_for() is sized for.
    com = 0.5 * (pos[:, 1:] + pos[:, :-1]).mean(1)
    target = offset_radius[:, None] * torch.stack([torch.cos(offset_angle), torch.sin(offset_angle)], -1)
    pos = pos - com[:, None] + target[:, None]
    half = max_extent / 2 + max_offset
    lo, hi = pos.amin(1), pos.amax(1)
    shift = (half - hi).clamp_max(0) + (-half - lo).clamp_min(0)
    pos = pos + shift[:, None]

    out = pos.float()
    return out[0] if batch is None else out


def rasterize_psf(trajectory: torch.Tensor, size: int, *, spacing: float = 0.25) -> torch.Tensor:
    """Draw a trajectory as a PSF: bilinear splats along the path, every instant weighted equally.

    The path is resampled densely (points at most ``spacing`` pixels apart, each segment, i.e. each equal slice
    of exposure time, getting the same number of points) so that fast segments leave no gaps and slow ones are
    brighter. Position ``(0, 0)`` is the canvas centre; see the module docstring for the orientation. The
    result's centre of mass equals the path's time-averaged position. Differentiable in the positions.

    Args:
        trajectory: ``(n, 2)`` or ``(batch, n, 2)`` positions ``(x, y)`` in pixels, equally spaced in time.
        size: side of the square canvas; odd, so that it has a centre pixel.
        spacing: largest distance between resampled points, pixels (> 0).

    Returns:
        ``(size, size)`` or ``(batch, size, size)`` non-negative PSFs, each summing to 1, in the trajectory's
        floating dtype.

    Raises:
        ValueError: bad shapes or arguments, or a path that leaves the canvas (the message says which size fits).

    Example:
        >>> import torch
        >>> psf = rasterize_psf(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 3)  # a 2-px horizontal streak
        >>> psf
        tensor([[0.0000, 0.0000, 0.0000],
                [0.2500, 0.5000, 0.2500],
                [0.0000, 0.0000, 0.0000]])
    """
    if not isinstance(trajectory, torch.Tensor) or trajectory.ndim not in (2, 3) or trajectory.shape[-1] != 2:
        shape = tuple(trajectory.shape) if isinstance(trajectory, torch.Tensor) else type(trajectory).__name__
        raise ValueError(f"trajectory must be a tensor of shape (n, 2) or (batch, n, 2), got {shape}")
    if trajectory.shape[-2] < 1 or not trajectory.dtype.is_floating_point:
        raise ValueError(f"trajectory needs at least one point and a floating dtype, got {tuple(trajectory.shape)} "
                         f"{trajectory.dtype}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer (the canvas has a centre pixel), got {size!r}")
    if not isinstance(spacing, (int, float)) or not spacing > 0:
        raise ValueError(f"spacing must be a positive number of pixels, got {spacing!r}")
    if not bool(torch.isfinite(trajectory).all()):
        raise ValueError("trajectory contains NaN or Inf")
    single = trajectory.ndim == 2
    traj = trajectory[None] if single else trajectory
    b, n, _ = traj.shape
    c = size // 2

    if n > 1:
        # m points per segment, at the midpoints of m equal time slices: equal time weight everywhere, and
        # the points' mean is exactly the path's time average. Each path takes the m its own longest segment
        # needs, so a PSF does not depend on the paths drawn beside it (and short paths cost fewer points).
        seg = traj[:, 1:] - traj[:, :-1]
        m = (seg.detach().norm(dim=-1).amax(1) / spacing).ceil().clamp_min(1).long()  # (b,)
        counts = m * (n - 1)
        owner = torch.repeat_interleave(torch.arange(b, device=traj.device), counts)  # the path of each point
        step = torch.arange(int(counts.sum()), device=traj.device) - (counts.cumsum(0) - counts)[owner]
        per = m[owner]
        segment = step // per
        frac = ((step % per).to(traj.dtype) + 0.5) / per.to(traj.dtype)
        pts = traj[owner, segment] + seg[owner, segment] * frac[:, None]  # (points, 2)
    else:
        owner, pts = torch.arange(b, device=traj.device), traj[:, 0]
    x, y = pts[..., 0] + c, pts[..., 1] + c
    x0, y0 = x.detach().floor(), y.detach().floor()
    if float(torch.minimum(x.min(), y.min())) < 0 or float(torch.maximum(x.max(), y.max())) > size - 1:
        reach = float(pts.detach().abs().max())
        raise ValueError(
            f"the trajectory reaches {reach:.2f} px from the centre and does not fit a {size}x{size} canvas; "
            f"use size >= {2 * (math.floor(reach) + 1) + 1}"
        )
    fx, fy = x - x0, y - y0
    ix, iy = x0.long(), y0.long()
    # The +1 neighbours of a point exactly on the last row/column carry zero weight; clamp their index.
    ix1, iy1 = (ix + 1).clamp_max(size - 1), (iy + 1).clamp_max(size - 1)
    base = owner * size * size
    row, row1 = base + iy * size, base + iy1 * size
    index = torch.cat([row + ix, row + ix1, row1 + ix, row1 + ix1])
    weight = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    flat = torch.zeros(b * size * size, dtype=traj.dtype, device=traj.device)
    flat = flat.index_add(0, index, weight)  # out of place: differentiable in the weights
    psf = flat.reshape(b, size, size)
    psf = psf / psf.sum((-2, -1), keepdim=True)
    return psf[0] if single else psf


def random_psf(
    generator: torch.Generator | None = None,
    size: int | None = None,
    max_extent: float = 35.0,
    min_extent: float = 3.0,
    max_offset: float = 5.0,
    *,
    n_steps: int = 128,
    batch: int | None = None,
) -> torch.Tensor:
    """A random camera-shake PSF: :func:`shake_trajectory` drawn by :func:`rasterize_psf`.

    Args:
        generator: the source of randomness (CPU); ``None`` uses PyTorch's global generator.
        size: odd canvas side; ``None`` picks :func:`psf_size_for` ``(max_extent, max_offset)`` (47 by default).
        max_extent: as in :func:`shake_trajectory`.
        min_extent: as in :func:`shake_trajectory`.
        max_offset: as in :func:`shake_trajectory`.
        n_steps: as in :func:`shake_trajectory`.
        batch: ``None`` for one PSF, or a number of independent PSFs.

    Returns:
        float32 ``(size, size)`` or ``(batch, size, size)``, non-negative, each summing to 1.

    Example:
        >>> import torch
        >>> psf = random_psf(torch.Generator().manual_seed(0), batch=4)
        >>> tuple(psf.shape), bool((psf >= 0).all()), torch.allclose(psf.sum((1, 2)), torch.ones(4))
        ((4, 47, 47), True, True)
    """
    needed = psf_size_for(max_extent, max_offset)
    if size is None:
        size = needed
    elif not isinstance(size, int) or isinstance(size, bool) or size % 2 == 0 or size < needed:
        raise ValueError(f"size must be an odd integer >= {needed} for max_extent={max_extent} and "
                         f"max_offset={max_offset} (or None to choose it), got {size!r}")
    path = shake_trajectory(generator, n_steps, max_extent, min_extent, max_offset, batch=batch)
    return rasterize_psf(path, size)
