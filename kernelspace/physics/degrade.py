"""What a camera adds after the blur: Poisson-Gaussian sensor noise in linear light, and JPEG compression.

A real blurry photo is made in this order: the scene's light is blurred over the exposure (linear light), the
sensor adds noise to it, values above the sensor's white are clipped, the camera response encodes them, and the
camera (or the web) stores them as a JPEG. The blur, clipping and response are a kernel-space model's ``F``
(:meth:`~kernelspace.models.KernelSpaceModel.apply_kernel`, which takes a ``sensor=`` function for the linear
step); this module gives the two other stages and the ranges they are drawn from:

- :func:`sensor_noise`: heteroscedastic Gaussian noise of variance ``shot * x + read**2`` on linear intensities
  ``x`` (white = 1): the Gaussian approximation of Poisson photon noise plus Gaussian read noise (Foi et al. 2008,
  "Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data"), each sample's
  realisation drawn from a seed of its own.
- :func:`jpeg_compress`: baseline JPEG as libjpeg codes it, batched in torch: 8-bit values, full-range YCbCr,
  4:2:0 chroma (2x2 means, triangular upsampling on decoding), 8x8 DCT, the standard (IJG) tables scaled by the
  quality, rounding. Not differentiable (the rounding has no gradient; kornia's ``jpeg_codec_differentiable``
  is the differentiable approximation, 4x slower here).
- :class:`Degradation`: the ranges and probabilities of both stages, and :meth:`Degradation.sample`, which draws
  their parameters apart from their application (as the blur's are).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Degradation", "sensor_noise", "jpeg_compress", "jpeg_tables"]

# The example tables of the JPEG standard (ITU-T T.81, Annex K), which libjpeg scales by the quality.
_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55), (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62), (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)  # fmt: skip
_CHROMA = ((17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99), (24, 26, 56, 99, 99, 99, 99, 99),
           (47, 66, 99, 99, 99, 99, 99, 99)) + ((99,) * 8,) * 4  # fmt: skip
# Full-range (JFIF) RGB -> YCbCr; the offset of 128 on Cb and Cr cancels against JPEG's level shift of 128.
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def sensor_noise(linear: torch.Tensor, shot: torch.Tensor, read: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Poisson-Gaussian sensor noise on linear intensities: ``x + sqrt(shot * max(x, 0) + read**2) * n``.

    Args:
        linear: ``(B, C, H, W)`` linear intensities, white = 1, before clipping.
        shot: ``(B,)`` shot-noise gains ``a`` (the variance per unit of signal: 1 / the photo-electrons at white).
        read: ``(B,)`` read-noise standard deviations ``b``.
        seed: ``(B,)`` integer seeds; sample ``i``'s ``n`` (standard normal, ``(C, H, W)``) is drawn on the CPU
            from ``seed[i]`` alone, so it replays on any device and beside any other samples.

    Returns:
        The noisy intensities, unclipped (clipping is the next stage). A sample with ``shot == read == 0`` is
        returned as is, and nothing is drawn for it.

    Example:
        >>> x = torch.full((2, 1, 64, 64), 0.25)
        >>> y = sensor_noise(x, torch.tensor([0.01, 0.0]), torch.tensor([0.02, 0.0]), torch.tensor([7, 8]))
        >>> round(float(y[0].var()), 4), torch.equal(y[1], x[1])  # 0.01 * 0.25 + 0.02 ** 2 = 0.0029
        (0.0029, True)
    """
    noisy = ((shot > 0) | (read > 0)).cpu()
    if not bool(noisy.any()):
        return linear
    rows = noisy.nonzero().flatten()
    draws = [torch.randn(linear.shape[1:], generator=torch.Generator().manual_seed(int(seed[i]))) for i in rows]
    n = torch.stack(draws).to(linear)
    view = (-1, 1, 1, 1)
    picked = linear[rows.to(linear.device)]
    sigma = (shot[rows].to(linear).view(view) * picked.clamp_min(0) + read[rows].to(linear).view(view) ** 2).sqrt_()
    return linear.index_copy(0, rows.to(linear.device), picked + sigma * n)


def jpeg_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B, 8, 8)`` luma and chroma quantisation tables of the qualities ``quality`` (``(B,)``, 1 to 100),
    scaled as libjpeg's ``jpeg_quality_scaling`` does (50: the standard's tables; 100: all ones).

    Example:
        >>> luma, chroma = jpeg_tables(torch.tensor([50, 100]))
        >>> int(luma[0, 0, 0]), int(chroma[0, 7, 7]), int(luma[1].max())
        (16, 99, 1)
    """
    q = quality.double().clamp(1, 100).view(-1, 1, 1)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    base = torch.tensor((_LUMA, _CHROMA), dtype=torch.float64, device=q.device)
    tables = ((base[None] * scale[:, None] + 50) / 100).floor().clamp(1, 255)
    return tables[:, 0], tables[:, 1]


@torch.no_grad()
def jpeg_compress(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Each image of a batch JPEG-coded and decoded at its own quality.

    Args:
        images: ``(B, 3, H, W)`` RGB or ``(B, 1, H, W)`` grey, encoded values in [0, 1] (clamped to it), any size
            (edges are repeated up to a multiple of 16 and cropped away after).
        quality: ``(B,)`` JPEG qualities, 1 to 100 (libjpeg's scale: 75 is its default, 95 a camera's "fine").

    Returns:
        The decoded images, same shape and dtype, on the 8-bit levels ``k / 255``. On real photos their PSNR
        is within 0.2 dB of Pillow's (libjpeg, 4:2:0) at qualities 30 to 80 (``tests/test_degradation.py``).

    Example:
        >>> x = torch.linspace(0, 1, 40).expand(2, 3, 24, 40).clone()  # a grey ramp ...
        >>> x[:, 1] = x[:, 1].flip(-1)  # ... with a colour gradient
        >>> y = jpeg_compress(x, torch.tensor([20, 100]))
        >>> [round(float((y[i] - x[i]).abs().max() * 255)) for i in range(2)]  # worst error in 8-bit levels
        [19, 4]
    """
    b, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"jpeg_compress takes RGB or grey images, (B, 3 or 1, H, W), got {tuple(images.shape)}")
    if quality.shape != (b,):
        raise ValueError(f"quality must hold one value per image, shape ({b},), got {tuple(quality.shape)}")
    dtype = images.dtype if images.dtype == torch.float64 else torch.float32
    levels = images.to(dtype).clamp(0, 1).mul(255).round()
    levels = F.pad(levels, (0, -w % 16, 0, -h % 16), mode="replicate")
    to_ycc = torch.tensor(_RGB_TO_YCC, dtype=dtype, device=images.device)
    ycc = torch.einsum("ij,bjhw->bihw", to_ycc, levels) if c == 3 else levels
    ycc[:, 0] -= 128  # JPEG's level shift (Cb and Cr, without their offset of 128, are centred already)
    luma, chroma = (t.to(dtype=dtype, device=images.device) for t in jpeg_tables(quality))
    out = _dct_quantise(ycc[:, :1], luma)
    if c == 3:
        small = _dct_quantise(F.avg_pool2d(ycc[:, 1:], 2), chroma)
        # libjpeg's "fancy" upsampling: each output pixel 3/4 its own chroma sample, 1/4 the next one, per axis.
        out = torch.cat([out, F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)], 1)
    out[:, 0] += 128
    if c == 3:
        out = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_ycc), out)
    return (out[..., :h, :w].round().clamp(0, 255) / 255).to(images.dtype)


def _dct_quantise(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """8x8 blocks of a level-shifted ``(B, C, H, W)`` plane through DCT, quantisation by ``table`` (``(B, 8, 8)``)
    with rounding, and the inverse DCT."""
    b, c, h, w = plane.shape
    blocks = plane.reshape(b, c, h // 8, 8, w // 8, 8)
    d = _dct_matrix(plane.dtype, plane.device)
    coef = torch.einsum("ij,bcyjxk,lk->bcyixl", d, blocks, d)
    step = table.view(b, 1, 1, 8, 1, 8)
    coef = (coef / step).round_().mul_(step)
    return torch.einsum("ji,bcyjxk,kl->bcyixl", d, coef, d).reshape(b, c, h, w)


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (JPEG's transform): ``coef = D @ block @ D.T``."""
    k, n = torch.arange(8, dtype=torch.float64)[:, None], torch.arange(8, dtype=torch.float64)[None]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * 0.5
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


@dataclass(frozen=True)
class Degradation:
    """The sensor noise and JPEG stages of a degradation chain: their ranges, and how often each is applied.

    Noise levels are drawn log-uniformly (each decade as likely: dim and bright scenes alike), JPEG qualities
    uniformly among the integers of the range. The defaults cover handheld photos from phones and DSLRs at ISO 100
    to about 3200, the conditions of camera shake (dim light, long exposures):

    Args:
        shot_noise: range of the shot-noise gain ``a`` in linear light (white = 1): ``1 / `` the photo-electrons
            a pixel holds at white. A phone sensor holds about 6,000 at ISO 100 (``a = 1.7e-4``) and 32x fewer
            at ISO 3200 (``a = 5e-3``); a DSLR about 8x more. Default ``(1e-4, 1e-2)``: at mid-grey an 8-bit
            noise of 1 to 12 levels.
        read_noise: range of the read noise ``b`` (a standard deviation, linear light): 2-3 electrons at the
            gains above, ``b = 5e-4`` (phone, ISO 100) to ``1e-2`` (ISO 3200), visible in the shadows (the camera
            response amplifies it there 5-10x). Default ``(5e-4, 1e-2)``.
        jpeg_quality: range of JPEG qualities (libjpeg's 1-100 scale). Default ``(60, 95)``: from heavily
            re-compressed web photos to a camera's "fine" setting.
        p_noise: probability that a degraded sample gets noise (default 1: every photo has some).
        p_jpeg: probability that it is JPEG-coded (default 0.5: half the samples stay uncompressed, as PNG or raw
            data sets such as GoPro frames and Levin 2009 are).
        response: range of the camera-response exponent, drawn uniformly per sample in place of the kernel's
            (the model's, 2.2 for the default prior), for a model with a camera response. Default ``None``: the
            kernel's. Data sets blurred in the stored values (Levin 2009, most synthetic benchmarks) act as an
            exponent of 1; ``(1.0, 2.2)`` covers them and real cameras.

    A range may be one value twice (``(0.01, 0.01)``); ``(0, 0)`` turns that noise term off.

    Example:
        >>> d = Degradation(jpeg_quality=(70, 90))
        >>> params = d.sample(4, torch.Generator().manual_seed(0))
        >>> sorted(params)
        ['jpeg_prob', 'jpeg_quality', 'noise_prob', 'noise_read', 'noise_seed', 'noise_shot', 'response_gamma']
        >>> bool(((params["jpeg_quality"] >= 70) & (params["jpeg_quality"] <= 90)).all())
        True
        >>> Degradation(p_jpeg=2)
        Traceback (most recent call last):
        ValueError: Degradation: p_jpeg must be a probability in [0, 1], got 2
    """

    shot_noise: tuple[float, float] = (1e-4, 1e-2)
    read_noise: tuple[float, float] = (5e-4, 1e-2)
    jpeg_quality: tuple[int, int] = (60, 95)
    p_noise: float = 1.0
    p_jpeg: float = 0.5
    response: tuple[float, float] | None = None

    #: The keys :meth:`sample` returns, each a ``(B,)`` tensor.
    PARAM_KEYS = ("noise_prob", "noise_shot", "noise_read", "noise_seed", "jpeg_prob", "jpeg_quality", "response_gamma")

    def __post_init__(self) -> None:
        for name in ("shot_noise", "read_noise"):
            low, high = _range(name, getattr(self, name), 0.0, 1.0, "numbers")
            if low == 0 < high:
                raise ValueError(
                    f"Degradation: {name} is drawn log-uniformly, so its low end must be above 0 (or give (0, 0) "
                    f"for no such noise), got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, (float(low), float(high)))
        object.__setattr__(self, "jpeg_quality", _range("jpeg_quality", self.jpeg_quality, 1, 100, "integers"))
        if self.response is not None:
            low, high = _range("response", self.response, 0.0, 10.0, "numbers")
            if low <= 0:
                raise ValueError(f"Degradation: response exponents must be above 0, got {self.response!r}")
            object.__setattr__(self, "response", (float(low), float(high)))
        for name in ("p_noise", "p_jpeg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(f"Degradation: {name} must be a probability in [0, 1], got {value!r}")

    def sample(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Draw the parameters of ``batch`` samples (CPU tensors, the keys ``Degradation.PARAM_KEYS``): which
        get noise (``noise_prob``, 0 or 1) at which levels (``noise_shot``, ``noise_read``) from which seed
        (``noise_seed``), which are JPEG-coded (``jpeg_prob``) at which quality (``jpeg_quality``), and under
        which camera response (``response_gamma``; 0: the kernel's own, as without ``response``).

        Everything is drawn, in a fixed order, whatever the probabilities: a seed gives each sample the same
        draws. ``generator``: a CPU generator (``None``: PyTorch's global one).
        """
        noise_gate = torch.rand(batch, generator=generator) < self.p_noise
        shot = _log_uniform(self.shot_noise, batch, generator)
        read = _log_uniform(self.read_noise, batch, generator)
        seed = torch.randint(0, 2**62, (batch,), generator=generator)
        jpeg_gate = torch.rand(batch, generator=generator) < self.p_jpeg
        quality = torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (batch,), generator=generator)
        low, high = self.response or (0.0, 0.0)
        gamma = low + (high - low) * torch.rand(batch, generator=generator)
        return {
            "noise_prob": noise_gate.float(),
            "noise_shot": shot,
            "noise_read": read,
            "noise_seed": seed,
            "jpeg_prob": jpeg_gate.float(),
            "jpeg_quality": quality,
            "response_gamma": gamma,
        }


def _range(name: str, value: Any, low: float, high: float, kind: str) -> tuple[Any, Any]:
    """``value`` as a ``(low, high)`` pair within ``[low, high]``, else an error saying what is accepted."""
    integral = kind == "integers"
    ok_type = numbers.Integral if integral else numbers.Real
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, ok_type) for v in value)
        or not low <= value[0] <= value[1] <= high
    ):
        raise ValueError(
            f"Degradation: {name} must be a (low, high) pair of {kind} with {low:g} <= low <= high <= {high:g}, "
            f"got {value!r}"
        )
    return (int(value[0]), int(value[1])) if integral else (value[0], value[1])


def _log_uniform(bounds: tuple[float, float], batch: int, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    if bounds[0] == 0:  # (0, 0): that noise term is off
        return torch.zeros(batch)
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return (low + u * (high - low)).exp().float()
