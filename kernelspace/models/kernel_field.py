"""KernelField: a CPU-sized kernel space where physics does what physics knows.

The kernel ``k`` is a field of local PSFs plus the camera response, on a grid of ``cell`` x ``cell`` pixels:
``k`` has ``psf_size**2 + 1`` channels; channels ``[0, S*S)`` are the taps of the cell's PSF (row-major, the
cross-correlation convention of :mod:`kernelspace.physics.psf`) and the last channel is the exponent ``gamma``
of the camera response (the same in every cell).

- F(x, k) (:meth:`apply_kernel`): decode the image to linear light (``x ** gamma``), blur it with the PSF field
  blended bilinearly between cell centres (:mod:`kernelspace.physics.eff`), clip at 1 (saturation) and encode
  again. Each PSF is made non-negative and normalised to sum to one before use, so every ``k`` is a physically
  valid blur and F is differentiable in x and k. Noise is out of F's scope: F gives the expected blurry image.
- G(x, y) (:meth:`extract_kernel`): for each candidate response exponent, the non-negative least-squares PSF
  field on image gradients (:func:`kernelspace.physics.kernel_estimation.estimate_psf_field`); the exponent
  whose field explains ``y`` best is kept.
- The prior (:meth:`sample_kernel`): random camera shake (Boracchi & Foi style trajectories) with an optional
  in-plane rotation, which makes the blur vary across the image.

Geometry: an image is padded (reflect) to multiples of ``cell`` (at least one cell); ``k`` has one cell per
``cell`` pixels of the padded image. Moving ``k`` to an image of another size resizes it bilinearly, which blends
neighbouring PSFs (a convex combination of PSFs is still a PSF).
"""

from __future__ import annotations

import math

import torch

from ..physics.eff import space_varying_blur
from ..physics.kernel_estimation import estimate_psf_field
from ..physics.psf import rasterize_psf, shake_trajectory
from .base import KernelSpaceModel

__all__ = ["KernelField"]

_DARK = 1e-6  # floor before the response's inverse power: keeps its slope finite at black


class KernelField(KernelSpaceModel, architecture="kernel-field"):
    """A kernel space of local PSFs in linear light: fast FFT blur, least-squares kernel extraction.

    Args:
        cell: pixels per kernel cell (the PSF field's resolution).
        psf_size: side S (odd) of each local PSF; blur longer than S pixels is out of reach.
        gammas: candidate camera-response exponents G chooses from (1.0 = linear data, 2.2 = a typical camera).
        iterations: FISTA iterations of the kernel estimate.
        tikhonov: weight of the PSF's squared norm, relative to the data term's largest eigenvalue.
        prior_max_extent: longest camera-shake extent (pixels) that :meth:`sample_kernel` draws.
        prior_max_rotation: largest in-plane rotation (degrees) over the exposure that it draws.

    Example:
        >>> import torch
        >>> model = KernelField(cell=64, psf_size=9)
        >>> x = torch.rand(1, 3, 70, 90)
        >>> k = model.sample_kernel(70, 90, seed=0)
        >>> tuple(k.shape)  # 70x90 is padded to 128x128: a 2x2 grid of 9*9 taps + gamma
        (1, 82, 2, 2)
        >>> tuple(model.apply_kernel(x, k).shape)
        (1, 3, 70, 90)
    """

    def __init__(
        self,
        cell: int = 128,
        psf_size: int = 41,
        gammas: list[float] | None = None,
        iterations: int = 150,
        tikhonov: float = 1e-4,
        prior_max_extent: float = 31.0,
        prior_max_rotation: float = 2.0,
    ) -> None:
        super().__init__()
        if psf_size % 2 == 0 or psf_size < 1:
            raise ValueError(f"psf_size must be a positive odd number, got {psf_size}")
        if cell < 8 or cell % 2:
            raise ValueError(f"cell must be an even number >= 8, got {cell}")
        self.cell, self.psf_size = cell, psf_size
        self.gammas = [float(g) for g in (gammas or [1.0, 2.2])]
        self.iterations, self.tikhonov = iterations, tikhonov
        self.prior_max_extent, self.prior_max_rotation = prior_max_extent, prior_max_rotation
        # A buffer gives the model a device and dtype (and save_pretrained a file) although nothing is learned.
        self.register_buffer("response_candidates", torch.tensor(self.gammas))

    @property
    def grid_multiple(self) -> int:  # type: ignore[override]
        return self.cell

    @property
    def min_side(self) -> int:  # type: ignore[override]
        return self.cell

    @property
    def kernel_channels(self) -> int:
        return self.psf_size**2 + 1

    @property
    def has_prior(self) -> bool:
        return True

    # -- k <-> PSF field ----------------------------------------------------------------------------------------
    def psf_field(self, kernel: torch.Tensor) -> torch.Tensor:
        """(B, S*S + 1, h, w) kernel -> (B, h, w, S, S) PSFs, each non-negative and summing to one."""
        s = self.psf_size
        taps = kernel[:, : s * s].clamp_min(0)
        taps = taps / taps.sum(1, keepdim=True).clamp_min(1e-12)
        b, _, h, w = kernel.shape
        return taps.permute(0, 2, 3, 1).reshape(b, h, w, s, s)

    def response(self, kernel: torch.Tensor) -> torch.Tensor:
        """The camera-response exponent of each kernel in the batch, shaped (B, 1, 1, 1)."""
        return kernel[:, -1:].mean((2, 3), keepdim=True)

    def pack(self, psf: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """(B, h, w, S, S) PSFs and (B,) exponents -> a (B, S*S + 1, h, w) kernel."""
        b, h, w, s, _ = psf.shape
        taps = psf.reshape(b, h, w, s * s).permute(0, 3, 1, 2)
        return torch.cat([taps, gamma.view(b, 1, 1, 1).expand(b, 1, h, w).to(taps)], 1)

    # -- F, G and the prior on padded tensors ------------------------------------------------------------------
    def _blur_with_kernel(self, sharp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        gamma = self.response(kernel)
        linear = sharp.clamp_min(_DARK) ** gamma
        blurred = space_varying_blur(linear, self.psf_field(kernel), self.cell)
        return blurred.clamp(_DARK, 1.0) ** (1.0 / gamma)

    def _kernel_from_pair(
        self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, None]:
        best_psf, best_err, best_gamma = None, None, None
        for gamma in self.gammas:
            xl, yl = sharp.clamp_min(0) ** gamma, blurry.clamp_min(0) ** gamma
            psf = estimate_psf_field(
                xl, yl, cell=self.cell, psf_size=self.psf_size, valid=valid,
                iterations=self.iterations, tikhonov=self.tikhonov,
            )
            # Compare the candidates where the user sees them: encoded values, inside the valid region.
            err = self._fit_error(sharp, blurry, self.pack(psf, torch.full((sharp.shape[0],), gamma)), valid)
            if best_err is None:
                best_psf, best_err = psf, err
                best_gamma = torch.full_like(err, gamma)
            else:
                better = err < best_err
                best_psf = torch.where(better.view(-1, 1, 1, 1, 1), psf, best_psf)
                best_gamma = torch.where(better, torch.full_like(err, gamma), best_gamma)
                best_err = torch.minimum(err, best_err)
        return self.pack(best_psf, best_gamma), None

    def _fit_error(
        self, sharp: torch.Tensor, blurry: torch.Tensor, kernel: torch.Tensor, valid: tuple[int, int] | None
    ) -> torch.Tensor:
        r = self.psf_size // 2
        vh, vw = valid or sharp.shape[-2:]
        diff = (self._blur_with_kernel(sharp, kernel) - blurry)[..., r : vh - r, r : vw - r]
        return diff.square().mean((1, 2, 3))

    def _sample_prior(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        # The trajectory helpers draw on the CPU; derive their generator from the caller's, so seeds reproduce.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        cpu = torch.Generator().manual_seed(seed)
        s, (h, w) = self.psf_size, grid
        max_extent = min(self.prior_max_extent, s - 2.0)
        path = shake_trajectory(cpu, max_extent=max_extent, max_offset=0.0, batch=batch).double()  # (B, n, 2)
        # Camera roll over the exposure moves the point at offset (cx, cy) from the image centre along the
        # circle's tangent (-cy, cx) * angle(t): the blur turns with the position in the image.
        angle = (torch.rand(batch, generator=cpu, dtype=torch.float64) * 2 - 1) * math.radians(self.prior_max_rotation)
        t = torch.linspace(-0.5, 0.5, path.shape[1], dtype=torch.float64)
        cy = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) * self.cell
        cx = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) * self.cell
        tangent = torch.stack(torch.broadcast_tensors(-cy[:, None], cx[None, :]), -1)  # (h, w, 2) as (x, y)
        swing = angle.view(batch, 1, 1, 1, 1) * t.view(1, 1, 1, -1, 1) * tangent[None, :, :, None, :]
        paths = path[:, None, None] + swing  # (B, h, w, n, 2)
        reach = (s // 2 - 1) / paths.abs().amax((-2, -1), keepdim=True).clamp_min(1e-9)
        paths = paths * reach.clamp(max=1.0)  # keep the swept path on the canvas
        field = rasterize_psf(paths.reshape(-1, *paths.shape[-2:]), s).reshape(batch, h, w, s, s).float()
        gamma = torch.full((batch,), max(self.gammas))
        return self.pack(field, gamma).to(self.device)
