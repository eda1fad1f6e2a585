"""Blind deblurring of any image: the sharp image and its blur kernel from the blurry image alone.

Two presets solve the paper's problem (find ``x`` and ``k`` with ``F(x, k) ~= y``):

- ``"fast"`` (default): per tile, a uniform PSF estimated from the blurry image in linear light
  (:func:`~kernelspace.deblur.estimate.estimate_psf`), then non-blind deconvolution with it
  (:func:`~kernelspace.deblur.nonblind.deconvolve`). The tile PSFs, put on the model's cell grid, form the
  returned kernel (a :class:`~kernelspace.models.KernelField` kernel), so ``model.apply_kernel(x, k)`` re-blurs.
  Models without PSFs (:class:`~kernelspace.models.BKSNet`) take the gradient path instead: Adam on ``x`` and
  the latent ``k`` through ``F = model.apply_kernel`` (:func:`~kernelspace.deblur.dip.deblur_by_gradient`).
- ``"paper"``: the gradient path with ``x`` re-parametrised by a deep image prior and ``k`` searched in the
  model's kernel space, as in Tran et al. 2021 (300 + 300 warm-up steps, then 5000 steps: minutes per tile).

Large images are cut into overlapping tiles (:mod:`kernelspace.deblur.tiling`), each with its own kernel, so
memory stays bounded and blur that varies across the image is handled locally.
"""

from __future__ import annotations

import warnings
from collections.abc import MutableMapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..device import resolve_device
from ..io import ImageLike, from_tensor, to_tensor
from ..models import KernelSpaceModel
from ..physics.blur import reflect_pad
from ..physics.response import from_linear, to_linear
from .dip import deblur_by_gradient, hyper_laplacian
from .estimate import TooFewEdges, estimate_psf, psf_extent, textured_crop
from .nonblind import deconvolve
from .tiling import Tile, split_tiles, tile_window

__all__ = [
    "BlindDeblurrer", "deblur", "TileResult", "PRESETS", "MIN_SIDE", "DEFAULT_PSF_SIZE", "DEFAULT_MAX_SHARPENING",
]

#: The presets :class:`BlindDeblurrer` knows.
PRESETS = ("fast", "paper")
#: The smallest side accepted: below it there is too little image to tell blur from content.
MIN_SIDE = 16
_WORK_SIDE = 64  # smaller images are mirrored up to this before processing
#: The fast preset's default longest blur: estimation degrades when the PSF is much larger than the blur (on
#: three Levin 2009 images, 41 px instead of 31 cost 4.6 to 22 dB), and longer blur is rare.
DEFAULT_PSF_SIZE = 31
#: The fast preset's guard: a tile whose deconvolution raises its total variation more than this factor is
#: estimated again with less support, then kept blurry if it fails again. On the evaluation sets, tiles the
#: deconvolution improved rose by 1.3-2.1x (the sharp frames hold 1.4-2.8x the blurry ones'); every tile above
#: 2.3x had lost 1.7-16 dB to the ringing of a wrong kernel (six GoPro tiles, one Levin image). Chosen on those
#: same sets: a heuristic, not a validated constant.
DEFAULT_MAX_SHARPENING = 2.3


def _as_psf(kernel: Any) -> torch.Tensor:
    """A user's known PSF (2-D array or tensor) -> an odd-sided float PSF summing to one."""
    psf = torch.as_tensor(np.asarray(kernel) if not isinstance(kernel, torch.Tensor) else kernel).detach().float()
    if psf.ndim != 2 or min(psf.shape) < 1 or not torch.isfinite(psf).all() or (psf < 0).any() or psf.sum() <= 0:
        raise ValueError(
            f"kernel must be a 2-D PSF (non-negative, finite, not all zero; a numpy array or tensor), "
            f"got shape {tuple(psf.shape)}"
        )
    side = max(psf.shape) | 1  # odd and square; the zero rows/columns go bottom/right so the taps stay put
    psf = F.pad(psf, (0, side - psf.shape[1], 0, side - psf.shape[0]))
    return psf / psf.sum()


def _total_variation(image: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels, both directions (the hyper-Laplacian at exponent 1)."""
    return float(hyper_laplacian(image, alpha=1.0, eps=0.0))


class TileResult(NamedTuple):
    """One tile's outcome (also what ``BlindDeblurrer(...)(image, tiles=store)`` keeps per finished tile).

    ``status`` is ``"estimated"`` (its own PSF), ``"known"`` (the user's PSF), ``"borrowed"`` (its own estimate
    was rejected or it had too few edges, and the nearest estimated tile's PSF passed the guard on it), or
    ``"kept blurry"`` (nothing passed: its pixels are the blurry ones). ``psf`` is the PSF it was deconvolved
    with (1 x 1 when none); the gradient path's tiles have a latent kernel and a 1 x 1 ``psf``.
    """

    restored: torch.Tensor
    kernel: torch.Tensor
    psf: torch.Tensor
    status: str


class BlindDeblurrer:
    """Deblur images without knowing their blur; optionally return the blur as a kernel of ``model``.

    Args:
        model: a :class:`~kernelspace.models.KernelSpaceModel`, a source :func:`~kernelspace.load_model` takes,
            or ``None`` for the shipped default (a KernelField). Moved to ``device``.
        preset: ``"fast"`` or ``"paper"`` (see the module).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"``.
        gamma: the camera response exponent: deblurring works on ``encoded ** gamma``. 1.0 (deblur the
            encoded values) measured best on both real evaluation sets (Levin 2009, which is linear, and GoPro,
            whose blur was made by averaging encoded frames: +1.3 dB over 2.2); 2.2 models a camera's sRGB-like
            response, for blur that happened in linear light before the camera encoded it.
        kernel: a known PSF (2-D, cross-correlation convention): non-blind mode, no estimation; every tile is
            deconvolved with it (needs a model with PSFs, such as KernelField).
        psf_size: the longest blur (pixels, odd) the fast preset looks for; ``None``: ``DEFAULT_PSF_SIZE`` (31),
            or the model's PSF size if smaller. Too large a size degrades the estimate (longer blur is not yet
            estimated well: see the deblurring docs); small images (crops) use a smaller one (a sixth of their side
            at most). The blur length found per tile is in ``tile_reports`` after each call.
        tile: tile side for large images; images up to this size are one tile.
        overlap: pixels that neighbouring tiles share (blended with raised-cosine windows).
        estimate_crop: the fast preset estimates each tile's PSF on its most textured crop of this side. Tiles
            with too few edges to estimate a blur from take the PSF of the nearest tile that has one (if the guard
            passes), or else stay as they are (their kernel: no blur).
        max_sharpening: the fast preset's guard against a wrong kernel estimate: when a tile's deconvolved total
            variation (mean absolute difference of neighbouring pixels) exceeds this many times the blurry tile's
            (that much new detail is ringing, not restored edges), its PSF is estimated once more with a quarter
            less support; if that fails too, the tile borrows the PSF of the nearest tile that has its own (guarded
            the same way), or else keeps its blurry pixels, with a warning (its kernel: no blur). ``None`` turns
            the guard off. Not applied to a known ``kernel``.
        iterations: gradient steps per tile; ``None``: 5000 for ``"paper"`` (as in the paper), 300 for the fast
            preset's gradient path (models without PSFs).
        x_warmup: ``"paper"``: steps fitting the image prior to the blurry tile first.
        k_warmup: ``"paper"``: steps fitting the kernel latent to the starting kernel first.
        progress: show a tqdm progress bar.
        seed: seeds the paper preset's image prior.
        estimate_options: keyword arguments for :func:`~kernelspace.deblur.estimate.estimate_psf`.
        deconvolve_options: keyword arguments for :func:`~kernelspace.deblur.nonblind.deconvolve` (e.g.
            ``weight``: larger for noisier images).
        gradient_options: keyword arguments for :func:`~kernelspace.deblur.dip.deblur_by_gradient` (learning
            rates, loss weights).

    Example:
        >>> import torch
        >>> from kernelspace import KernelField
        >>> psf = torch.zeros(5, 5); psf[2, :] = 0.2  # known: a 5-px horizontal blur
        >>> deblurrer = BlindDeblurrer(KernelField(cell=64, psf_size=9), kernel=psf, progress=False)
        >>> sharp, k = deblurrer(torch.rand(3, 40, 50), return_kernel=True)
        >>> tuple(sharp.shape), tuple(k.shape)
        ((3, 40, 50), (1, 82, 1, 1))
    """

    def __init__(
        self,
        model: KernelSpaceModel | str | None = None,
        preset: str = "fast",
        device: str | torch.device = "auto",
        *,
        gamma: float = 1.0,
        kernel: Any = None,
        psf_size: int | None = None,
        tile: int = 512,
        overlap: int = 64,
        estimate_crop: int = 256,
        max_sharpening: float | None = DEFAULT_MAX_SHARPENING,
        iterations: int | None = None,
        x_warmup: int = 300,
        k_warmup: int = 300,
        progress: bool = True,
        seed: int = 0,
        estimate_options: dict[str, Any] | None = None,
        deconvolve_options: dict[str, Any] | None = None,
        gradient_options: dict[str, Any] | None = None,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"gamma must be a positive number (2.2 for photos, 1.0 for linear data), got {gamma!r}")
        split_tiles(tile, tile, tile, overlap)  # validates tile and overlap
        if psf_size is not None and (psf_size < 3 or psf_size % 2 == 0):
            raise ValueError(f"psf_size must be an odd number >= 3, got {psf_size}")
        if estimate_crop < 2 * 3 + 2:
            raise ValueError(f"estimate_crop must be at least 8 pixels, got {estimate_crop}")
        if max_sharpening is not None and (isinstance(max_sharpening, bool) or not max_sharpening > 1):
            raise ValueError(f"max_sharpening must be a number above 1 or None (no guard), got {max_sharpening!r}")
        self.device = resolve_device(device)
        if not isinstance(model, KernelSpaceModel):
            from ..hub import load_model

            model = load_model(model, device=self.device)
        self.model = model.to(self.device).eval()
        self.has_psfs = hasattr(self.model, "pack")
        self.known_psf = None if kernel is None else _as_psf(kernel).to(self.device)
        if self.known_psf is not None and not self.has_psfs:
            raise ValueError(
                f"a known PSF (kernel=...) needs a model with PSFs, such as KernelField; {type(model).__name__} "
                "kernels are latent codes"
            )
        self.preset, self.gamma = preset, float(gamma)
        self.psf_size = psf_size or min(DEFAULT_PSF_SIZE, getattr(self.model, "psf_size", DEFAULT_PSF_SIZE))
        self.tile, self.overlap, self.estimate_crop = tile, overlap, estimate_crop
        self.max_sharpening = max_sharpening
        self.gradient = preset == "paper" or not self.has_psfs
        self.iterations = iterations if iterations is not None else (5000 if preset == "paper" else 300)
        self.x_warmup, self.k_warmup = (x_warmup, k_warmup) if preset == "paper" else (0, 0)
        self.progress, self.seed = progress, seed
        self.estimate_options = dict(estimate_options or {})
        self.deconvolve_options = dict(deconvolve_options or {})
        self.gradient_options = dict(gradient_options or {})

    def __call__(
        self,
        image: ImageLike,
        *,
        return_kernel: bool = False,
        tiles: MutableMapping[int, TileResult] | None = None,
    ) -> Any:
        """Deblur ``image`` (any kind :func:`kernelspace.io.to_tensor` accepts; a batch image by image).

        ``tiles`` (one image only) holds finished tiles by index (:class:`TileResult`): those found in it are
        not computed again and each newly finished tile is put in it, so a store that keeps them on disk lets a
        large image resume tile by tile (see :mod:`kernelspace.jobs.deblur_files`).

        After the call, ``tile_reports`` lists each tile of the last image: its place, ``status`` (see
        :class:`TileResult`) and ``blur_length``, the side holding 98% of its PSF's mass
        (:func:`~kernelspace.deblur.estimate.psf_extent`; 1: no blur).

        Returns:
            The sharp image in the same kind, dtype, layout and channel count as ``image``; with
            ``return_kernel=True`` also the blur as a ``(B, channels, h, w)`` kernel of the model for the
            image's size (on the image's device; CPU for PIL and numpy).
        """
        blurry, spec = to_tensor(image, name="image")
        height, width = blurry.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise ValueError(
                f"image is {height}x{width}; deblurring needs at least {MIN_SIDE} pixels a side (there is too "
                "little image to tell blur from content)"
            )
        # Grey images (three equal channels here) are deblurred once, not three times, on the fast path.
        channels = 1 if spec.channels == 1 and not self.gradient else 3
        if tiles is not None and blurry.shape[0] != 1:
            raise ValueError(f"tiles= keeps the tiles of one image; got a batch of {blurry.shape[0]}")
        sharp, kernels = [], []
        with torch.no_grad():
            for b in range(blurry.shape[0]):
                one = blurry[b : b + 1, :channels].detach().to(self.device)
                restored, kernel = self._deblur_one(one, tiles)
                sharp.append(restored.expand(-1, 3, -1, -1))
                kernels.append(kernel)
        result = from_tensor(torch.cat(sharp), spec)
        if return_kernel:
            return result, torch.cat(kernels).to(spec.device or torch.device("cpu"))
        return result

    # -- one image -------------------------------------------------------------------------------------------
    def _deblur_one(
        self, blurry: torch.Tensor, done: MutableMapping[int, TileResult] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = blurry.shape[-2:]
        # Tiny images are mirrored up to a workable size (and cropped back at the end).
        pad_h, pad_w = max(0, _WORK_SIDE - height), max(0, _WORK_SIDE - width)
        top, left = pad_h // 2, pad_w // 2
        work = reflect_pad(blurry, (left, pad_w - left, top, pad_h - top)) if pad_h or pad_w else blurry
        h, w = work.shape[-2:]
        tiles = split_tiles(h, w, self.tile, self.overlap)
        total = len(tiles) * (self.x_warmup + self.k_warmup + self.iterations) if self.gradient else len(tiles)
        unit = "step" if self.gradient else "tile"
        out = torch.zeros_like(work)
        weights = torch.zeros(h, w, device=work.device)
        # The whole image's kernel: each cell takes the kernel of the tile that weighs most at its centre.
        cell = self.model.grid_multiple
        grid = self.model.kernel_size_for(height, width)
        centre_y = torch.tensor([min(int((i + 0.5) * cell), height - 1) + top for i in range(grid[0])])
        centre_x = torch.tensor([min(int((j + 0.5) * cell), width - 1) + left for j in range(grid[1])])
        best = torch.full(grid, -1.0)
        kernel = None
        results: dict[int, TileResult] = {}
        with tqdm(total=total, unit=unit, desc="deblurring", disable=not self.progress, leave=False) as bar:
            for index, tile in enumerate(tiles):
                rows, cols = tile.region
                if done is not None and index in done:
                    restored, tile_kernel, psf, status = done[index]
                    results[index] = TileResult(restored.to(work.device), tile_kernel.to(work.device), psf, status)
                    bar.update(total // len(tiles))
                else:
                    results[index] = self._deblur_tile(work[..., rows, cols], bar)
                    bar.update(0 if self.gradient else 1)
                    if done is not None and results[index].status in ("estimated", "known"):
                        done[index] = results[index]
            for index in self._borrow(results, tiles, work):
                if done is not None:
                    done[index] = results[index]
        for index, tile in enumerate(tiles):
            rows, cols = tile.region
            window = tile_window(tile, h, w, self.overlap).to(work.device)
            out[..., rows, cols] += results[index].restored * window
            weights[rows, cols] += window
            kernel = self._take_cells(
                kernel, best, tile, results[index].kernel, window.cpu(), centre_y, centre_x, cell
            )
        self.tile_reports = [
            {"tile": index, "top": t.top, "left": t.left, "height": t.height, "width": t.width,
             "status": results[index].status, "blur_length": psf_extent(results[index].psf)}
            for index, t in enumerate(tiles)
        ]
        blurry_tiles = [r["tile"] for r in self.tile_reports if r["status"] == "kept blurry"]
        if blurry_tiles:
            warnings.warn(
                f"{len(blurry_tiles)} of {len(tiles)} tiles kept their blurry pixels (tiles {blurry_tiles}): no PSF "
                "estimated for them or their neighbours passed the sharpening guard; their kernel says no blur",
                stacklevel=3,
            )
        sharp = (out / weights)[..., top : top + height, left : left + width]
        return sharp.clamp(0, 1), kernel

    def _borrow(self, results: dict[int, TileResult], tiles: list[Tile], work: torch.Tensor) -> list[int]:
        """Deconvolve each tile left blurry with the PSF of the nearest tile that has its own, when the guard
        passes: a neighbour's blur is a better guess than none (camera shake varies slowly across a photo), and
        the tiles then blend without a blurry patch. Returns the tiles settled here."""
        own = [i for i, r in results.items() if r.status == "estimated" and r.psf.shape[-1] > 1]
        settled = []
        for index, result in results.items():
            if result.status != "kept blurry":
                continue
            settled.append(index)
            if not own:
                continue
            tile = tiles[index]
            nearest = min(own, key=lambda i: (tiles[i].top - tile.top) ** 2 + (tiles[i].left - tile.left) ** 2)
            blurry = work[..., tile.region[0], tile.region[1]]
            psf = results[nearest].psf
            sharp = from_linear(deconvolve(to_linear(blurry, self.gamma), psf, **self.deconvolve_options), self.gamma)
            if self._passes(sharp, blurry):
                results[index] = TileResult(sharp, self._psf_kernel(psf), psf, "borrowed")
        return settled

    def _passes(self, sharp: torch.Tensor, blurry: torch.Tensor) -> bool:
        """The sharpening guard (see ``max_sharpening``)."""
        if self.max_sharpening is None:
            return True
        # The small allowance (a thirtieth of a grey level) lets a flat tile pass, whose deconvolution is flat too.
        return _total_variation(sharp) <= self.max_sharpening * _total_variation(blurry) + 1e-4

    @staticmethod
    def _take_cells(
        kernel: torch.Tensor | None,
        best: torch.Tensor,
        tile: Tile,
        tile_kernel: torch.Tensor,
        window: torch.Tensor,
        centre_y: torch.Tensor,
        centre_x: torch.Tensor,
        cell: int,
    ) -> torch.Tensor:
        """Copy into ``kernel`` the cells whose centre this tile weighs more than any tile before it."""
        if kernel is None:
            kernel = tile_kernel.new_zeros(1, tile_kernel.shape[1], *best.shape)
        inside_y = (centre_y >= tile.top) & (centre_y < tile.top + tile.height)
        inside_x = (centre_x >= tile.left) & (centre_x < tile.left + tile.width)
        ys = (centre_y - tile.top).clamp(0, tile.height - 1)
        xs = (centre_x - tile.left).clamp(0, tile.width - 1)
        weight = torch.where(inside_y[:, None] & inside_x[None, :], window[ys[:, None], xs[None, :]], -1.0)
        take = weight > best
        best.copy_(torch.maximum(weight, best))
        # The tile kernel's own cell under each centre (a uniform tile kernel has a single cell).
        iy = (ys // cell).clamp(max=tile_kernel.shape[-2] - 1).to(tile_kernel.device)
        ix = (xs // cell).clamp(max=tile_kernel.shape[-1] - 1).to(tile_kernel.device)
        values = tile_kernel[0][:, iy[:, None], ix[None, :]]
        return torch.where(take.to(kernel.device), values, kernel[0])[None]

    # -- one tile --------------------------------------------------------------------------------------------
    def _deblur_tile(self, blurry: torch.Tensor, bar: tqdm) -> TileResult:
        none = torch.ones(1, 1, device=blurry.device)
        if self.gradient:
            with torch.enable_grad():
                sharp, kernel = deblur_by_gradient(
                    self.model, blurry, self._start_kernel(blurry), gamma=self.gamma, image_prior=self.preset == "paper",
                    iterations=self.iterations, x_warmup=self.x_warmup, k_warmup=self.k_warmup, seed=self.seed,
                    progress=bar.update, **self.gradient_options,
                )
            return TileResult(sharp, kernel, none, "estimated")
        linear = to_linear(blurry, self.gamma)
        if self.known_psf is not None:
            sharp = from_linear(deconvolve(linear, self.known_psf, **self.deconvolve_options), self.gamma)
            return TileResult(sharp, self._psf_kernel(self.known_psf), self.known_psf, "known")

        def report(done: int, steps: int) -> None:
            bar.set_postfix_str(f"kernel estimate {done}/{steps}", refresh=True)

        crop = textured_crop(linear, self.estimate_crop)
        size = max(3, min(self.psf_size, (min(crop.shape[-2:]) // 6) | 1))
        # When the guard rejects an estimate, one retry with a quarter less support: a misled estimate (streaks
        # along a periodic texture) fills the support it is given.
        for attempt in dict.fromkeys((size, max(3, round(0.75 * size) | 1))):
            try:
                psf = estimate_psf(crop, attempt, progress=report, **self.estimate_options)
            except TooFewEdges:
                # A flat tile (sky, a wall) shows no blur to estimate; it may borrow a neighbour's (see _borrow).
                break
            sharp = from_linear(deconvolve(linear, psf, **self.deconvolve_options), self.gamma)
            if self._passes(sharp, blurry):
                return TileResult(sharp, self._psf_kernel(psf), psf, "estimated")
        return TileResult(blurry, self._no_blur(blurry), none, "kept blurry")

    def _no_blur(self, like: torch.Tensor) -> torch.Tensor:
        return self._psf_kernel(torch.ones(1, 1, device=like.device))

    def _psf_kernel(self, psf: torch.Tensor) -> torch.Tensor:
        """One PSF -> a one-cell kernel of the model (resized to any grid, it is that PSF everywhere)."""
        field = self.model.fit_canvas(psf[None].float())[None, None]
        return self.model.pack(field, torch.tensor([self.gamma], device=field.device))

    def _start_kernel(self, blurry: torch.Tensor) -> torch.Tensor:
        """The gradient path's starting kernel: barely any blur (a 3x3 box), or the model's "no blur" G(y, y)."""
        if not self.has_psfs:
            return self.model.extract_kernel(blurry, blurry).clone()
        start = self._psf_kernel(torch.full((3, 3), 1 / 9, device=self.device))
        return start.expand(-1, -1, *self.model.kernel_size_for(*blurry.shape[-2:])).clone()


def deblur(
    image: ImageLike,
    *,
    model: KernelSpaceModel | str | None = None,
    preset: str = "fast",
    device: str | torch.device = "auto",
    return_kernel: bool = False,
    **options: Any,
) -> Any:
    """Deblur ``image`` blindly: ``BlindDeblurrer(model, preset, device, **options)(image, return_kernel=...)``.

    See :class:`BlindDeblurrer` for the options. Build a :class:`BlindDeblurrer` once to deblur many images
    (the model is loaded once).

    Example:
        >>> import numpy as np
        >>> from kernelspace import KernelField
        >>> blurry = (np.random.default_rng(0).random((48, 64)) * 255).astype(np.uint8)
        >>> out = deblur(blurry, model=KernelField(cell=64, psf_size=9), progress=False)
        >>> out.shape, out.dtype
        ((48, 64), dtype('uint8'))
    """
    return BlindDeblurrer(model, preset, device, **options)(image, return_kernel=return_kernel)
