"""Realistic synthetic blur from clean photos: camera shake, saturated highlights, sensor noise, 8-bit output.

:class:`SyntheticBlur` turns sharp sRGB-like images into blurry ones the way a camera would (Rim et al. 2022
showed that deblurring models trained on such physically modelled blur transfer to real photos far better than
ones trained on plain convolution):

1. encoded values to linear light (:func:`~kernelspace.physics.response.to_linear`), where blur is an average;
2. optionally, highlights are made brighter than the sensor can record (``highlight_gain``): a sharp photo has
   clipped lamps and sky, but the real scene was brighter, and a blurry photo smears that true radiance into
   bright saturated streaks;
3. blur, per image either

   * ``"uniform"``: one camera-shake PSF (:func:`~kernelspace.physics.psf.shake_trajectory`) for the whole
     frame, applied as a cross-correlation with a mirrored border
     (:func:`~kernelspace.physics.blur.psf_blur`), or
   * ``"nonuniform"``: the camera also rotates (roll, yaw, pitch) along a smooth random path; the exposure is
     integrated as a weighted average of warped copies (:func:`~kernelspace.physics.blur.homography_blur`),
     poses placed so that no pixel moves more than ``pose_spacing`` between them (no ghosting), each weighted
     by the time it stands for. The image centre follows the shake trajectory exactly, so its local PSF is
     that trajectory's PSF;

4. Poisson-Gaussian sensor noise, variance ``shot * signal + read ** 2`` in linear light;
5. clipping to [0, 1] (saturation), back through the camera response, and rounding to 8 bits.

All randomness is drawn by :meth:`SyntheticBlur.sample_params` into a :class:`BlurParams`; :meth:`SyntheticBlur.apply`
is deterministic given them. So a blur can be replayed on another image, inspected, or edited (a custom PSF
in ``params.psf`` is applied as is), and ``blur(x, seed=0)`` gives bit-identical output every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..physics.blur import homography_blur, psf_blur
from ..physics.camera import camera_homographies
from ..physics.psf import psf_size_for, rasterize_psf, shake_trajectory
from ..physics.response import Gamma, from_linear, to_linear

__all__ = ["BlurParams", "SyntheticBlur"]

# Probe points (fractions of the image size) whose motion decides how finely poses must be spaced: the
# largest motion of a small-rotation homography over the frame is at its corners, edges or centre.
_PROBES = torch.tensor([[u, v] for u in (0.0, 0.5, 1.0) for v in (0.0, 0.5, 1.0)], dtype=torch.float64)


@dataclass
class BlurParams:
    """Everything random about one batch of :class:`SyntheticBlur`; tensors are on the CPU.

    Attributes:
        nonuniform: ``(B,)`` bool, ``True`` where the blur is non-uniform (camera rotation).
        trajectory: ``(B, n, 2)`` camera-shake path ``(x, y)`` in pixels, equally spaced in time.
        rotation: ``(B, n, 3)`` camera angles ``(roll, yaw, pitch)`` in radians over the same times (zero for
            uniform samples).
        psf: ``(B, S, S)`` the PSF of ``trajectory``. It *is* the blur of uniform samples (replace it to apply
            your own) and the local blur at the image centre of non-uniform ones (supervision for both).
        homographies: ``(B, K, 3, 3)`` float64 camera poses of non-uniform samples (output to sharp pixels).
        pose_weights: ``(B, K)`` float64 exposure time of each pose; zero pads unused poses and uniform samples.
        focal: ``(B,)`` focal length used for the homographies, pixels.
        highlight_gain: ``(B,)`` factor applied to the brightest linear values before blurring (1: none).
        shot_noise: ``(B,)`` Poisson part of the noise variance per unit of linear signal.
        read_noise: ``(B,)`` standard deviation of the Gaussian part, linear units.
        noise_seeds: ``(B,)`` int64 seed of each image's noise pattern.
        height: image height the parameters were drawn for.
        width: image width the parameters were drawn for.
    """

    nonuniform: torch.Tensor
    trajectory: torch.Tensor
    rotation: torch.Tensor
    psf: torch.Tensor
    homographies: torch.Tensor
    pose_weights: torch.Tensor
    focal: torch.Tensor
    highlight_gain: torch.Tensor
    shot_noise: torch.Tensor
    read_noise: torch.Tensor
    noise_seeds: torch.Tensor
    height: int
    width: int

    @property
    def batch_size(self) -> int:
        """Number of images the parameters describe."""
        return int(self.nonuniform.shape[0])

    @property
    def modes(self) -> list[str]:
        """``"uniform"`` or ``"nonuniform"`` per image."""
        return ["nonuniform" if bool(v) else "uniform" for v in self.nonuniform]

    def __getitem__(self, index: int | slice | list[int] | torch.Tensor) -> BlurParams:
        """The parameters of a subset of the batch: ``apply(x[i], params[i])`` replays image ``i`` exactly."""
        if isinstance(index, int):
            index = [index]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return BlurParams(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def _number(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _integer(name: str, value: object, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def _range(name: str, value: object, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers in [{lo}, {hi}], got {value!r}") from None
    a, b = _number(f"{name}[0]", a, lo, hi), _number(f"{name}[1]", b, lo, hi)
    if a > b:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value!r}")
    return a, b


def _draw(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    """Log-uniform in [low, high] when low > 0 (noise and gains matter by ratio), else uniform."""
    lo, hi = bounds
    if lo > 0:
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    return lo + (hi - lo) * u


def _smooth_walk(generator: torch.Generator | None, batch: int, n: int, dims: int) -> torch.Tensor:
    """(batch, n, dims) smooth random paths, zero time-average, unit peak-to-peak (or zero) per dimension."""
    noise = torch.randn(batch, n, dims, generator=generator, dtype=torch.float64)
    rho = 0.95  # velocity correlation from step to step: hand tremor is smooth over ~20 steps
    vel = torch.empty_like(noise)
    vel[:, 0] = noise[:, 0]
    for t in range(1, n):
        vel[:, t] = rho * vel[:, t - 1] + math.sqrt(1 - rho**2) * noise[:, t]
    path = vel.cumsum(1)
    path = path - 0.5 * (path[:, 1:] + path[:, :-1]).mean(1, keepdim=True)  # the sharp frame is the mean pose
    span = path.amax(1, keepdim=True) - path.amin(1, keepdim=True)
    return path / span.clamp_min(1e-12)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of fp (n, ...) given at increasing xp (n,) at points x (m,)."""
    i = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1 = xp[i - 1], xp[i]
    w = ((x - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0, 1)
    w = w.reshape(-1, *([1] * (fp.ndim - 1)))
    return fp[i - 1] * (1 - w) + fp[i] * w


class SyntheticBlur(nn.Module):
    """Random realistic blur for sharp ``(B, 3, H, W)`` sRGB-like images in [0, 1]; see the module docstring.

    Args:
        p_nonuniform: probability that an image gets non-uniform blur (camera rotation) rather than one PSF.
        max_extent: largest camera-shake extent (longer side of the path's bounding box), pixels.
        min_extent: smallest extent; extents are uniform in ``[min_extent, max_extent]``.
        max_offset: radius of the random offset of the blur's centre of mass, pixels (real pairs are offset).
        psf_size: odd PSF canvas side; ``None`` chooses the smallest that holds every path (47 by default).
        max_roll: largest peak-to-peak camera roll over the exposure, degrees (rotation about the centre).
        max_tilt: largest peak-to-peak yaw and pitch, degrees (keystone on top of the translation).
        focal_length: focal length in units of the longer image side (1.0 is about a 40 mm lens on full frame).
        p_saturation: probability that an image's highlights are boosted past the sensor's range.
        highlight_gain: (low, high) range of the boost; drawn log-uniformly.
        highlight_threshold: linear value where the boost starts, ramping up to the full gain at 1 (0.95 is
            about 8-bit level 249: only what is clipped, or nearly, in the sharp photo gets brighter).
        shot_noise: (low, high) range of the Poisson noise variance per unit linear signal; log-uniform when
            low > 0, else uniform. ``(0, 0)`` turns it off.
        read_noise: (low, high) range of the Gaussian noise standard deviation (linear); drawn likewise.
        gamma: camera response, a power-law exponent or ``"srgb"`` (:mod:`kernelspace.physics.response`).
            sRGB by default: it is how photos are encoded, and its linear toe matters here, because a pure
            power law would amplify the sensor noise in the shadows far beyond what cameras show.
        n_steps: positions per trajectory.
        pose_spacing: largest motion of any pixel between two consecutive poses of non-uniform blur, pixels.
        max_poses: cap on the poses of one non-uniform blur (the cost is about one bilinear warp each).
        quantize: round the output to 8-bit levels (``k / 255``), as a saved photo would be.

    Raises:
        ValueError: an argument outside the range stated above.

    Example:
        >>> import torch
        >>> blur = SyntheticBlur()
        >>> sharp = torch.rand(2, 3, 64, 64)
        >>> y1, y2 = blur(sharp, seed=0), blur(sharp, seed=0)
        >>> tuple(y1.shape), torch.equal(y1, y2), bool(((y1 * 255).round() == y1 * 255).all())
        ((2, 3, 64, 64), True, True)
        >>> params = blur.sample_params(2, 64, 64, torch.Generator().manual_seed(0))
        >>> y, psf = blur.apply(sharp, params, return_psf=True)
        >>> tuple(psf.shape), params.modes
        ((2, 47, 47), ['uniform', 'uniform'])
    """

    def __init__(
        self,
        p_nonuniform: float = 0.3,
        max_extent: float = 35.0,
        min_extent: float = 3.0,
        max_offset: float = 5.0,
        psf_size: int | None = None,
        max_roll: float = 2.0,
        max_tilt: float = 0.5,
        focal_length: float = 1.0,
        p_saturation: float = 0.3,
        highlight_gain: tuple[float, float] = (2.0, 10.0),
        highlight_threshold: float = 0.95,
        shot_noise: tuple[float, float] = (1e-4, 4e-3),
        read_noise: tuple[float, float] = (2e-4, 3e-3),
        gamma: Gamma = "srgb",
        n_steps: int = 128,
        pose_spacing: float = 1.0,
        max_poses: int = 64,
        quantize: bool = True,
    ) -> None:
        super().__init__()
        self.p_nonuniform = _number("p_nonuniform", p_nonuniform, 0.0, 1.0)
        self.max_extent = _number("max_extent", max_extent, 0.0, 1e4)
        self.min_extent = _number("min_extent", min_extent, 0.0, 1e4)
        if self.min_extent > self.max_extent:
            raise ValueError(f"min_extent ({min_extent}) must not exceed max_extent ({max_extent})")
        self.max_offset = _number("max_offset", max_offset, 0.0, 1e4)
        needed = psf_size_for(self.max_extent, self.max_offset)
        if psf_size is None:
            psf_size = needed
        elif not isinstance(psf_size, int) or isinstance(psf_size, bool) or psf_size % 2 == 0 or psf_size < needed:
            raise ValueError(
                f"psf_size must be an odd integer >= {needed} (what max_extent={max_extent} and "
                f"max_offset={max_offset} need), or None to choose it; got {psf_size!r}"
            )
        self.psf_size = psf_size
        self.max_roll = _number("max_roll (degrees)", max_roll, 0.0, 20.0)
        self.max_tilt = _number("max_tilt (degrees)", max_tilt, 0.0, 20.0)
        self.focal_length = _number("focal_length", focal_length, 0.0, 100.0, lo_open=True)
        self.p_saturation = _number("p_saturation", p_saturation, 0.0, 1.0)
        self.highlight_gain = _range("highlight_gain", highlight_gain, 1.0, 1e4)
        self.highlight_threshold = _number("highlight_threshold", highlight_threshold, 0.0, 1.0, hi_open=True)
        self.shot_noise = _range("shot_noise", shot_noise, 0.0, 1.0)
        self.read_noise = _range("read_noise", read_noise, 0.0, 1.0)
        to_linear(torch.zeros(1), gamma)  # raises ValueError naming what is accepted
        self.gamma = gamma
        self.n_steps = _integer("n_steps", n_steps, 2)
        self.pose_spacing = _number("pose_spacing", pose_spacing, 0.0, 1e4, lo_open=True)
        self.max_poses = _integer("max_poses", max_poses, 1)
        if not isinstance(quantize, bool):
            raise ValueError(f"quantize must be True or False, got {quantize!r}")
        self.quantize = quantize

    def extra_repr(self) -> str:
        return (
            f"p_nonuniform={self.p_nonuniform}, extent=[{self.min_extent}, {self.max_extent}], "
            f"max_offset={self.max_offset}, psf_size={self.psf_size}, p_saturation={self.p_saturation}, "
            f"shot_noise={self.shot_noise}, read_noise={self.read_noise}, gamma={self.gamma!r}"
        )

    # -- sampling ------------------------------------------------------------------------------------------------
    def sample_params(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> BlurParams:
        """Draw every random choice for ``batch`` images of ``height`` x ``width`` pixels.

        Args:
            batch: number of images.
            height: image height, pixels.
            width: image width, pixels.
            generator: a CPU :class:`torch.Generator`; ``None`` uses PyTorch's global one. The parameters are
                drawn on the CPU whatever device the images are on, so a seed means the same blur everywhere.

        Returns:
            A :class:`BlurParams` for :meth:`apply`.

        Example:
            >>> import torch
            >>> p = SyntheticBlur(p_nonuniform=1.0).sample_params(3, 32, 48, torch.Generator().manual_seed(1))
            >>> p.batch_size, p.modes[0], tuple(p.psf.shape), p.pose_weights.sum(1).tolist()
            (3, 'nonuniform', (3, 47, 47), [1.0, 1.0, 1.0])
        """
        batch, height, width = _integer("batch", batch, 1), _integer("height", height, 1), _integer("width", width, 1)
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise ValueError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
        f64, n = torch.float64, self.n_steps

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, dtype=f64)

        # Fixed drawing order, everything drawn whatever the options: a seed gives the same draws for each image
        # regardless of, say, p_nonuniform.
        nonuniform = uniform(batch) < self.p_nonuniform
        trajectory = shake_trajectory(generator, n, self.max_extent, self.min_extent, self.max_offset, batch=batch)
        walk = _smooth_walk(generator, batch, n, 3)
        amplitude = uniform(batch, 3) * torch.tensor([self.max_roll, self.max_tilt, self.max_tilt], dtype=f64)
        saturate = uniform(batch) < self.p_saturation
        gain = torch.where(saturate, _draw(self.highlight_gain, uniform(batch)), torch.ones(batch, dtype=f64))
        shot = _draw(self.shot_noise, uniform(batch))
        read = _draw(self.read_noise, uniform(batch))
        noise_seeds = torch.randint(0, 2**62, (batch,), generator=generator)

        rotation = walk * torch.deg2rad(amplitude)[:, None] * nonuniform[:, None, None]
        focal = torch.full((batch,), self.focal_length * max(height, width), dtype=f64)
        homs, weights = [], []
        for i in range(batch):
            if bool(nonuniform[i]):
                h, w = self._poses(trajectory[i].to(f64), rotation[i], height, width, float(focal[i]))
            else:
                h, w = torch.eye(3, dtype=f64)[None], torch.zeros(1, dtype=f64)
            homs.append(h)
            weights.append(w)
        k = max(len(w) for w in weights)
        homographies = torch.eye(3, dtype=f64).repeat(batch, k, 1, 1)
        pose_weights = torch.zeros(batch, k, dtype=f64)
        for i, (h, w) in enumerate(zip(homs, weights)):
            homographies[i, : len(w)], pose_weights[i, : len(w)] = h, w
        return BlurParams(
            nonuniform=nonuniform,
            trajectory=trajectory,
            rotation=rotation.float(),
            psf=rasterize_psf(trajectory, self.psf_size),
            homographies=homographies,
            pose_weights=pose_weights,
            focal=focal.float(),
            highlight_gain=gain.float(),
            shot_noise=shot.float(),
            read_noise=read.float(),
            noise_seeds=noise_seeds,
            height=height,
            width=width,
        )

    def _poses(
        self, trajectory: torch.Tensor, rotation: torch.Tensor, height: int, width: int, focal: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Poses (K, 3, 3) and their time weights (K,) for one image: equal slices of the largest pixel motion."""
        n = trajectory.shape[0]
        times = torch.linspace(0, 1, n, dtype=torch.float64)
        dense = camera_homographies(trajectory, rotation, height, width, focal)  # (n, 3, 3)
        probes = _PROBES * torch.tensor([width - 1, height - 1], dtype=torch.float64)
        probes = torch.cat([probes, torch.ones(len(probes), 1, dtype=torch.float64)], 1)
        seen = torch.einsum("nij,pj->npi", dense, probes)
        seen = seen[..., :2] / seen[..., 2:]
        step = (seen[1:] - seen[:-1]).norm(dim=-1).amax(-1)  # (n - 1,) largest motion in each time slice
        arc = torch.cat([torch.zeros(1, dtype=torch.float64), step.cumsum(0)])
        count = min(self.max_poses, max(1, math.ceil(float(arc[-1]) / self.pose_spacing - 1e-9)))
        # Boundaries at equal arc length; the first and last at the exposure's start and end (a dwell at either
        # end must keep its time). A tiny ramp makes the arc strictly increasing where the camera stood still.
        ramp = arc + torch.arange(n, dtype=torch.float64) * 1e-12
        targets = torch.linspace(0, float(ramp[-1]), count + 1, dtype=torch.float64)
        bounds = _interp(targets, ramp, times)
        bounds[0], bounds[-1] = 0.0, 1.0
        # One pose per slice, at its middle time: every instant of the slice is within pose_spacing of it.
        mid = 0.5 * (bounds[1:] + bounds[:-1])
        at_mid = (_interp(mid, times, trajectory), _interp(mid, times, rotation))
        poses = camera_homographies(*at_mid, height, width, focal)
        return poses, bounds[1:] - bounds[:-1]

    # -- applying ------------------------------------------------------------------------------------------------
    def apply(
        self, sharp: torch.Tensor, params: BlurParams, *, return_psf: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Blur ``sharp`` with the given parameters; deterministic.

        Args:
            sharp: ``(B, C, H, W)`` float in [0, 1], encoded (sRGB-like), any device; ``B, H, W`` as in ``params``.
            params: from :meth:`sample_params` (possibly edited or subset with ``params[i]``).
            return_psf: also return ``params.psf`` on ``sharp``'s device: the PSF of uniform samples, the local PSF
                at the image centre of non-uniform ones.

        Returns:
            The blurry images, same shape, dtype and device as ``sharp``, in [0, 1] (multiples of 1/255 when
            ``quantize``); with ``return_psf``, the pair ``(blurry, psf)``.

        Example:
            >>> import torch
            >>> blur = SyntheticBlur(max_extent=0, min_extent=0, max_offset=0, p_saturation=0,
            ...                      shot_noise=(0, 0), read_noise=(0, 0))  # a delta PSF, no noise
            >>> x = torch.randint(0, 256, (1, 3, 16, 16)) / 255
            >>> torch.equal(blur(x, seed=0), x)
            True
        """
        _check_image(sharp)
        b, c, h, w = sharp.shape
        if not isinstance(params, BlurParams):
            raise ValueError(f"params must be a BlurParams from sample_params, got {type(params).__name__}")
        if (params.batch_size, params.height, params.width) != (b, h, w):
            raise ValueError(
                f"params were drawn for {params.batch_size} images of {params.height}x{params.width}, "
                f"got {b} of {h}x{w}; call sample_params with the images' batch size and size"
            )
        dtype, device = sharp.dtype, sharp.device
        linear = to_linear(sharp, self.gamma)

        # Highlights past the sensor's range: a smooth ramp from the threshold up to the full gain at 1, on the
        # brightest channel so that colours keep their hue.
        gain = params.highlight_gain.to(device=device, dtype=dtype)
        if bool((gain != 1).any()):
            peak = linear.amax(1, keepdim=True)
            ramp = ((peak - self.highlight_threshold) / (1 - self.highlight_threshold)).clamp(0, 1)
            linear = linear * (1 + (gain.view(b, 1, 1, 1) - 1) * ramp)

        nonuniform = params.nonuniform.to(torch.bool)
        blurred = torch.empty_like(linear)
        uni = torch.nonzero(~nonuniform).flatten()
        if len(uni):
            blurred[uni.to(device)] = psf_blur(linear[uni.to(device)], params.psf[uni])
        non = torch.nonzero(nonuniform).flatten()
        if len(non):
            nd = non.to(device)
            blurred[nd] = homography_blur(linear[nd], params.homographies[non], params.pose_weights[non])

        # Poisson-Gaussian noise on the integrated signal, then the sensor's range clips it. Each image's noise
        # is drawn on the CPU from its own stored seed: every device gives the same pattern, and so does a subset.
        shot = params.shot_noise.to(device=device, dtype=dtype).view(b, 1, 1, 1)
        read = params.read_noise.to(device=device, dtype=dtype).view(b, 1, 1, 1)
        if bool((shot > 0).any() or (read > 0).any()):
            noise = torch.stack([
                torch.randn(c, h, w, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
                for seed in params.noise_seeds
            ]).to(device=device, dtype=dtype)
            variance = shot * blurred.clamp_min(0) + read**2
            # sqrt has an infinite slope at 0: keep gradients finite where an image has no noise at all.
            blurred = blurred + torch.where(variance > 0, variance.clamp_min(1e-30).sqrt(), 0.0) * noise
        out = from_linear(blurred.clamp(0, 1), self.gamma)
        if self.quantize:
            out = (out * 255).round() / 255
        out = out.clamp(0, 1)
        if return_psf:
            return out, params.psf.to(device=device, dtype=dtype)
        return out

    def forward(
        self,
        sharp: torch.Tensor,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        *,
        return_psf: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample parameters and apply them: ``apply(sharp, sample_params(...))``.

        Args:
            sharp: ``(B, C, H, W)`` float in [0, 1], encoded (sRGB-like).
            generator: CPU generator to draw from (its state advances).
            seed: or a seed: the same seed gives bit-identical output. At most one of ``generator`` and ``seed``;
                with neither, PyTorch's global generator is used.
            return_psf: as in :meth:`apply`.
        """
        if seed is not None:
            if generator is not None:
                raise ValueError("give either generator or seed, not both")
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        _check_image(sharp)
        params = self.sample_params(sharp.shape[0], sharp.shape[2], sharp.shape[3], generator)
        return self.apply(sharp, params, return_psf=return_psf)


def _check_image(sharp: object) -> None:
    if not isinstance(sharp, torch.Tensor) or sharp.ndim != 4 or not sharp.dtype.is_floating_point:
        what = type(sharp).__name__
        if isinstance(sharp, torch.Tensor):
            what = f"{sharp.dtype} tensor of shape {tuple(sharp.shape)}"
        raise ValueError(f"sharp must be a float (B, C, H, W) tensor in [0, 1], got a {what}")
    if sharp.numel() == 0:
        raise ValueError(f"sharp is empty (shape {tuple(sharp.shape)})")
    lo, hi = torch.aminmax(sharp.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and float(lo) >= 0 and float(hi) <= 1):
        raise ValueError(
            f"sharp must hold values in [0, 1] (divide 8-bit data by 255), "
            f"found min {float(lo):.4g} and max {float(hi):.4g}"
        )
