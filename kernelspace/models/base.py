"""The interface every kernel-space model shares.

A kernel-space model pairs a kernel extractor G(x, y) -> k with a blur operator F(x, k) -> y. Subclasses
implement three tensor-level hooks on padded float32 ``(B, 3, H, W)`` images (``_kernel_from_pair``, ``_blur_with_kernel`` and,
where the model has a prior, ``_sample_prior``); this base class adds input validation, any-size padding, kernel
resizing, device handling, inference mode, and saving/loading in ``huggingface_hub``'s conventions
(``config.json`` beside ``model.safetensors``).

Kernel layout: ``k`` is a ``(B, kernel_channels, h, w)`` tensor with one cell per ``grid_multiple`` pixels of
the padded image (:meth:`KernelSpaceModel.kernel_size_for`). When ``k`` is applied to an image whose grid has
another size, it is resized bilinearly (``align_corners=False``) to that grid, so a kernel stretches with the
image: each cell keeps describing the same relative region.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_model as load_safetensors_model
from torch import nn

from ..files import save_tensors
from ..io import ImageLike, from_tensor, to_tensor
from ..metrics import charbonnier
from ..physics.blur import reflect_pad

#: A function on linear light, ``(B, C, H, W) -> (B, C, H, W)``, run between the blur and clipping.
Sensor = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["KernelSpaceModel", "Sensor", "ARCHITECTURES", "WEIGHTS_NAME", "CONFIG_NAME", "check_int", "check_number"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

#: Every model class by its ``architecture`` id, the key written into ``config.json``.
ARCHITECTURES: dict[str, type[KernelSpaceModel]] = {}


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is an integer in ``[low, high]``, else an error saying what is accepted.

    Models check their configuration with it before allocating anything: a ``config.json`` from elsewhere can
    ask for any size.

    Example:
        >>> check_int("psf_size", "7", 1, 255)
        Traceback (most recent call last):
        TypeError: psf_size must be an integer from 1 to 255, got '7' (str)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer from {low} to {high}, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value}")
    return int(value)


def check_number(name: str, value: Any, low: float, high: float, *, above: bool = False) -> float:
    """``value`` as a float if it is a finite number in ``[low, high]`` (``(low, high]`` with ``above``), else an
    error saying what is accepted."""
    interval = f"{'above' if above else 'at least'} {low:g} and at most {high:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number {interval}, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and (value > low if above else value >= low) and value <= high):
        raise ValueError(f"{name} must be a number {interval}, got {value}")
    return float(value)


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mirror-pad the bottom and right of ``x`` up to (height, width)."""
    return reflect_pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))


class KernelSpaceModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="kernelspace",
    tags=["image-deblurring", "blur-synthesis", "kernelspace"],
    repo_url="https://github.com/kernelspace/kernelspace",
):
    """Base class of the kernel-space models: ``extract_kernel`` (G), ``apply_kernel`` (F), ``sample_kernel``.

    Subclasses declare ``architecture="..."`` in their class statement and the pixel size of one kernel cell
    (``grid_multiple``) and the smallest side their network accepts (``min_side``).
    """

    architecture: ClassVar[str]
    grid_multiple: ClassVar[int] = 1
    min_side: ClassVar[int] = 1
    #: Weight of the VAE head's KL term in :meth:`training_loss`.
    kl_weight: ClassVar[float] = 1e-4

    def __init_subclass__(cls, architecture: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if architecture is not None:
            cls.architecture = architecture
            ARCHITECTURES[architecture] = cls

    # -- what subclasses provide -----------------------------------------------------------------------------
    @property
    def kernel_channels(self) -> int:
        raise NotImplementedError

    @property
    def has_prior(self) -> bool:
        """Whether :meth:`sample_kernel` can draw novel kernels."""
        return False

    def with_response(self, kernel: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``kernel`` (B, C, h, w) with the camera-response exponents ``gamma`` (B,) where they are above 0, for
        models whose kernels hold one; the others refuse."""
        raise ValueError(f"{type(self).__name__}'s kernels hold no camera response: Degradation(response=...) needs a "
                         "model that has one, such as KernelField")

    #: The ways :meth:`extract_kernel` can compute G (its ``method=``); the first is the default unless the model's
    #: config picks another.
    extraction_methods: tuple[str, ...] = ("network",)

    #: What :meth:`training_loss` can train (its ``objective=``, ``kernelspace train --objective``); the first is
    #: the default.
    training_objectives: tuple[str, ...] = ("joint",)

    def check_objective(self, objective: str | None) -> str:
        """``objective`` checked against ``training_objectives`` (``None``: the first)."""
        if objective is None:
            return self.training_objectives[0]
        if objective not in self.training_objectives:
            raise ValueError(f"objective must be one of {', '.join(map(repr, self.training_objectives))} for "
                             f"{type(self).__name__}, got {objective!r}")
        return objective

    def trainable_parameters(self, objective: str | None = None) -> list[nn.Parameter]:
        """The parameters ``objective`` trains (the trainer freezes the others): by default all of them."""
        self.check_objective(objective)
        return list(self.parameters())

    def _kernel_from_pair(
        self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None = None, method: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Padded tensors -> (kernel mean, sigma or None); ``valid`` is the unpadded (height, width), ``method``
        one of ``extraction_methods`` (``None``: the model's default)."""
        raise NotImplementedError

    def _blur_with_kernel(
        self, sharp: torch.Tensor, kernel: torch.Tensor, sensor: Sensor | None = None
    ) -> torch.Tensor:
        """Padded tensor and a kernel on its grid -> blurred tensor, with ``sensor`` applied in linear light."""
        raise NotImplementedError

    def _sample_prior(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    # -- geometry ---------------------------------------------------------------------------------------------
    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height`` x ``width`` is padded to before the network sees it."""
        m = self.grid_multiple
        return max(self.min_side, m * math.ceil(height / m)), max(self.min_side, m * math.ceil(width / m))

    def kernel_size_for(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of ``k`` for an image of ``height`` x ``width``: one cell per ``grid_multiple`` pixels
        of the padded image.

        Example:
            >>> from kernelspace.models import BKSNet
            >>> BKSNet(nf=8, kernel_dim=64).kernel_size_for(720, 1280)  # padded to 768 x 1280
            (6, 10)
        """
        ph, pw = self.padded_size(height, width)
        return ph // self.grid_multiple, pw // self.grid_multiple

    def resize_kernel(self, kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Resize ``kernel`` (bilinear, ``align_corners=False``) to the grid of an image of that size."""
        grid = self.kernel_size_for(height, width)
        if tuple(kernel.shape[-2:]) == grid:
            return kernel
        return F.interpolate(kernel, size=grid, mode="bilinear", align_corners=False)

    # -- device and autograd ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def _grad_context(self, *tensors: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autograd only where a gradient can be asked for; inference mode otherwise."""
        wants_grad = any(t.requires_grad for t in tensors) or (
            self.training and any(p.requires_grad for p in self.parameters())
        )
        return contextlib.nullcontext() if torch.is_grad_enabled() and wants_grad else torch.inference_mode()

    def _prepare(self, img: ImageLike, name: str):
        t, spec = to_tensor(img, name=name)
        return t.to(self.device), spec

    # -- the public interface ---------------------------------------------------------------------------------
    def extract_kernel(
        self, sharp: ImageLike, blurry: ImageLike, *, return_dist: bool = False, method: str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """G(x, y): the latent blur kernel that turns ``sharp`` into ``blurry``.

        Args:
            sharp: the sharp image(s) x, any accepted image kind.
            blurry: the blurry image(s) y, same size as ``sharp``.
            return_dist: also return sigma (models with a prior, such as the VAE head).
            method: how G is computed, one of the model's ``extraction_methods`` (``None``: its default). For
                :class:`~kernelspace.models.KernelField`: ``"fast"`` (cell by cell, then a few exact steps) or
                ``"solve"`` (the coupled least squares, coarse to fine: seconds more, a fraction of a dB better).

        Returns:
            ``k`` as a ``(B, kernel_channels, h, w)`` tensor on the input's device (B = 1 for a single image),
            or ``(mean, sigma)``. Inputs that require grad give a differentiable ``k``; otherwise it is computed
            under :func:`torch.inference_mode` (``k.clone()`` makes it an ordinary tensor to optimise).
        """
        if method is not None and method not in self.extraction_methods:
            raise ValueError(
                f"method must be one of {', '.join(map(repr, self.extraction_methods))} for {type(self).__name__}, "
                f"got {method!r}"
            )
        x, spec = self._prepare(sharp, "sharp")
        y, _ = self._prepare(blurry, "blurry")
        if x.shape != y.shape:
            raise ValueError(
                f"sharp and blurry must have the same batch and size, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if return_dist and not self.has_prior:
            raise ValueError(f"{type(self).__name__} has no kernel distribution; call with return_dist=False")
        ph, pw = self.padded_size(*x.shape[-2:])
        with self._grad_context(x, y):
            valid = (x.shape[-2], x.shape[-1])
            mean, sigma = self._kernel_from_pair(_pad_to(x, ph, pw), _pad_to(y, ph, pw), valid=valid, method=method)
        out_device = spec.device or torch.device("cpu")
        if return_dist:
            return mean.to(out_device), sigma.to(out_device)
        return mean.to(out_device)

    def apply_kernel(self, sharp: ImageLike, kernel: torch.Tensor, *, sensor: Sensor | None = None) -> ImageLike:
        """F(x, k): blur ``sharp`` with the latent kernel ``kernel``; differentiable in both.

        ``kernel`` is ``(B, C, h, w)`` or ``(1, C, h, w)`` (shared by the batch); a kernel made for another
        image size is resized to this image's grid (see :meth:`resize_kernel`). Returns the same image kind,
        dtype, layout and channel count as ``sharp``.

        ``sensor``: a function applied to the blurred batch in linear light, before clipping and the camera
        response (sensor noise: :func:`kernelspace.physics.degrade.sensor_noise`); it sees the padded
        ``(B, C, H', W')`` tensor (:meth:`padded_size`). A model that blurs linear light (:class:`KernelField`)
        calls it there; :class:`BKSNet`, a network on encoded values, decodes its output with the power law 2.2
        for it and clips and encodes the result.
        """
        x, spec = self._prepare(sharp, "sharp")
        k = self._check_kernel(kernel, x.shape[0]).to(self.device)
        height, width = x.shape[-2:]
        ph, pw = self.padded_size(height, width)
        with self._grad_context(x, k):
            k = self.resize_kernel(k, height, width).expand(x.shape[0], -1, -1, -1)
            y = self._blur_with_kernel(_pad_to(x, ph, pw), k, sensor)
        return from_tensor(y[..., :height, :width], spec)

    def sample_kernel(
        self,
        height: int,
        width: int,
        *,
        batch: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Draw ``batch`` novel kernels from the model's prior for an image of ``height`` x ``width``.

        Reproducible: pass a :class:`torch.Generator` or a ``seed`` (one of them is required, so that a drawn
        kernel can always be drawn again).
        """
        if not self.has_prior:
            raise ValueError(
                f"{type(self).__name__} has no prior to sample from; use a model with one (e.g. use_vae=True)"
            )
        if (generator is None) == (seed is None):
            raise ValueError("pass exactly one of generator= or seed= so that the sample can be reproduced")
        for name, value in (("height", height), ("width", width)):
            check_int(name, value, 1, 1 << 20)
        check_int("batch", batch, 1, 1 << 16)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        with torch.inference_mode():
            return self._sample_prior(batch, self.kernel_size_for(height, width), generator)

    def sample_kernels(self, height: int, width: int, seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """One kernel from the prior per seed, each a function of its seed alone: row ``i`` equals
        ``sample_kernel(height, width, seed=seeds[i])`` whatever else is drawn beside it.

        This is how data pipelines give every sample its own blur and still replay any sample from its seed.

        Example:
            >>> from kernelspace.models import KernelField
            >>> model = KernelField(cell=32, psf_size=9)
            >>> k = model.sample_kernels(64, 96, [7, 8])
            >>> tuple(k.shape), bool(torch.allclose(k[1:], model.sample_kernel(64, 96, seed=8)))
            ((2, 82, 2, 3), True)
        """
        if not self.has_prior:
            raise ValueError(f"{type(self).__name__} has no prior to sample from; use a model with one")
        for name, value in (("height", height), ("width", width)):
            check_int(name, value, 1, 1 << 20)
        seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seeds must be a non-empty sequence of integers, got {seeds!r:.80}")
        with torch.inference_mode():
            return self._sample_prior_seeded(seeds, self.kernel_size_for(height, width))

    def _sample_prior_seeded(self, seeds: list[int], grid: tuple[int, int]) -> torch.Tensor:
        """:meth:`sample_kernels` on a grid; models whose prior can draw many seeds at once override it."""
        return torch.cat([self._sample_prior(1, grid, torch.Generator(device=self.device).manual_seed(s)) for s in seeds])

    def forward(self, sharp: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
        """F(x, G(x, y)) on float tensors whose sides the network accepts (the training objective's path)."""
        mean, _ = self._kernel_from_pair(sharp, blurry)
        return self._blur_with_kernel(sharp, mean)

    def training_loss(
        self,
        sharp: torch.Tensor,
        blurry: torch.Tensor,
        psf: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        objective: str | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective on a batch: ``(loss, figures to log)``; what the trainer minimises.

        This default is the paper's: F and G jointly, ``Charbonnier(y, F(x, G(x, y)))``; a model with a VAE head
        blurs with a sampled kernel ``mean + sigma * N(0, 1)`` and adds ``kl_weight`` times its KL divergence.
        Sides must be ones the model accepts (see :meth:`padded_size`). ``psf`` is the known PSF of synthetic
        blur, ``(B, S, S)``, for models that learn from it; this default does not need it. ``objective``: one of
        ``training_objectives`` (this default has one, ``"joint"``).
        """
        self.check_objective(objective)
        mean, sigma = self._kernel_from_pair(sharp, blurry)
        kernel, logs, kl = mean, {}, mean.new_zeros(())
        if sigma is not None:
            eps = torch.randn(mean.shape, generator=generator).to(mean)
            kernel = mean + sigma * eps
            variance = sigma.square().clamp_min(1e-12)
            kl = 0.5 * (mean.square() + variance - 1 - variance.log()).mean()
            logs["kl"] = kl.item()
        reconstruction = charbonnier(self._blur_with_kernel(sharp, kernel), blurry)
        logs["charbonnier"] = reconstruction.item()
        return reconstruction + self.kl_weight * kl, logs

    def training_side(self, crop: int, objective: str | None = None) -> int:
        """The side of the training crops for a requested ``crop``: the nearest the model accepts at or above it."""
        return max(self.padded_size(crop, crop))

    def finish_training(self, psf: torch.Tensor, objective: str | None = None) -> None:
        """Called once after training ``objective`` with a bank of ``(N, S, S)`` PSFs drawn like the training blur;
        models that fit something to them (such as a latent distribution) override it."""

    def _check_kernel(self, kernel: Any, batch: int) -> torch.Tensor:
        if not isinstance(kernel, torch.Tensor):
            raise TypeError(f"kernel must be a torch.Tensor from extract_kernel/sample_kernel, got {type(kernel).__name__}")
        if kernel.ndim == 3:
            kernel = kernel[None]
        if kernel.ndim != 4 or kernel.shape[1] != self.kernel_channels or kernel.shape[0] not in (1, batch):
            raise ValueError(
                f"kernel must have shape (B, {self.kernel_channels}, h, w) with B = 1 or {batch}, "
                f"got {tuple(kernel.shape)}"
            )
        if not torch.isfinite(kernel.detach()).all():
            raise ValueError("kernel contains NaN or Inf values")
        return kernel.float()

    # -- saving and loading -----------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments plus ``architecture``: what ``config.json`` holds."""
        return {**(self._hub_mixin_config or {}), "architecture": self.architecture}

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any):
        """Write ``config.json`` and ``model.safetensors`` (and a model card) to ``save_directory``."""
        return super().save_pretrained(save_directory, config=config or self.config, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        # The config also travels inside the weights file so that a lone .safetensors can be loaded. Written
        # reproducibly (the same model gives the same bytes) and with the permissions open() would give.
        metadata = {"kernelspace_config": json.dumps(self.config, sort_keys=True), "format": "pt"}
        save_tensors(save_directory / WEIGHTS_NAME, self.state_dict(), metadata)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> KernelSpaceModel:
        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_NAME
        else:
            weights = hf_hub_download(
                repo_id=model_id,
                filename=WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        load_safetensors_model(model, str(weights), strict=strict, device=str(map_location))
        return model.eval()
