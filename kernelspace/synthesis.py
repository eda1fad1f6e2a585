"""Blur synthesis: move a real blur onto other images, or draw new blurs from a model's prior.

:class:`BlurSynthesizer` wraps a kernel-space model with the operations a data pipeline needs:

- :meth:`~BlurSynthesizer.extract_kernel` and :meth:`~BlurSynthesizer.apply_kernel`: the model's G and F;
- :meth:`~BlurSynthesizer.transfer`: the blur of one sharp/blurry pair on another sharp image (of any size);
- :meth:`~BlurSynthesizer.sample`: novel blurs from the model's prior, reproducible from a seed.

Images follow the library's I/O rules (:mod:`kernelspace.io`): a PIL image, a numpy array or a CxHxW /
BxCxHxW tensor comes back as the same kind; a list (or tuple) of images, possibly of different sizes, comes
back as a list. Tensors may live on the CPU or a GPU; results come back on the input's device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .device import DeviceLike, check_threads, resolve_device, torch_threads
from .hub import load_model
from .io import ImageLike, to_tensor
from .models import KernelSpaceModel

__all__ = ["BlurSynthesizer", "ModelLike"]

#: What the ``model=`` arguments accept: a loaded model, or anything :func:`~kernelspace.load_model` takes.
ModelLike = KernelSpaceModel | str | os.PathLike | None


_Method = TypeVar("_Method", bound=Callable)


def _in_threads(method: _Method) -> _Method:
    """Run a :class:`BlurSynthesizer` method with the synthesizer's ``threads``."""

    @functools.wraps(method)
    def wrapper(self: BlurSynthesizer, *args, **kwargs):
        with torch_threads(self.threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _is_list(images: object) -> bool:
    return isinstance(images, (list, tuple))


def _as_list(name: str, images: Sequence[ImageLike], length: int | None = None) -> list[ImageLike]:
    if len(images) == 0:
        raise ValueError(f"{name} is an empty list; give at least one image")
    if length is not None and len(images) != length:
        raise ValueError(f"{name} has {len(images)} items but {length} were expected (one per image)")
    return list(images)


class BlurSynthesizer:
    """Blur transfer and blur sampling with a kernel-space model.

    Args:
        model: a loaded :class:`~kernelspace.models.KernelSpaceModel`, or anything :func:`~kernelspace.load_model`
            accepts (``None``: the default model shipped with the package).
        device: where the model runs: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: CPU threads PyTorch uses during each call (``None``: PyTorch's setting, one per core unless
            changed). On a CPU shared with other work, ``threads=1`` is often several times faster
            (:func:`~kernelspace.device.torch_threads`).

    Memory: the blur runs a block of the image at a time, so a 4000x3000 photo needs about 1.1 GB (the model and
    PyTorch included) and a 1280x720 frame about 0.4 GB (docs/synthesis.md).

    Example:
        >>> import numpy as np
        >>> from kernelspace.models import KernelField
        >>> synth = BlurSynthesizer(KernelField(cell=64, psf_size=9), device="cpu")
        >>> photo = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
        >>> blurry = synth.sample(photo, seed=0)
        >>> blurry.shape, blurry.dtype.name
        ((70, 90, 3), 'uint8')
        >>> np.array_equal(blurry, synth.sample(photo, seed=0))  # the same seed, the same blur
        True
        >>> moved = synth.transfer(photo, blurry, photo[:40, :50])  # that blur on another image
        >>> moved.shape
        (40, 50, 3)
    """

    def __init__(self, model: ModelLike = None, device: DeviceLike = "auto", threads: int | None = None) -> None:
        self.threads = check_threads(threads)
        dev = resolve_device(device)
        if isinstance(model, KernelSpaceModel):
            self.model = model.to(dev).eval()
        elif model is None or isinstance(model, (str, os.PathLike)):
            self.model = load_model(model, device=dev)
        else:
            raise TypeError(
                f"model must be a KernelSpaceModel, a source for kernelspace.load_model (folder, file, Hub id) "
                f"or None for the default model; got {type(model).__name__}"
            )

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike | None, device: DeviceLike = "auto", threads: int | None = None
    ) -> BlurSynthesizer:
        """A synthesizer with the model at ``source`` (anything :func:`~kernelspace.load_model` accepts)."""
        return cls(load_model(source, device=device), threads=threads)

    def __repr__(self) -> str:
        return f"BlurSynthesizer(model={type(self.model).__name__}, device={self.model.device})"

    # -- the model's G and F -------------------------------------------------------------------------------------
    @_in_threads
    def extract_kernel(
        self, sharp: ImageLike | Sequence[ImageLike], blurry: ImageLike | Sequence[ImageLike]
    ) -> torch.Tensor | list[torch.Tensor]:
        """The latent kernel(s) ``k`` that turn ``sharp`` into ``blurry`` (the model's G).

        Args:
            sharp: a sharp image, a batch, or a list of images.
            blurry: the blurry counterpart(s), same kind and sizes.

        Returns:
            A ``(B, C, h, w)`` kernel tensor (B = 1 for one image), or a list of ``(1, C, h, w)`` kernels for a
            list of pairs (their grids differ when the image sizes do).
        """
        if _is_list(sharp) or _is_list(blurry):
            if not (_is_list(sharp) and _is_list(blurry)):
                raise TypeError("give sharp and blurry both as lists, or both as single images / batches")
            sharp_list = _as_list("sharp", sharp)
            blurry_list = _as_list("blurry", blurry, len(sharp_list))
            return [self.model.extract_kernel(x, y) for x, y in zip(sharp_list, blurry_list)]
        return self.model.extract_kernel(sharp, blurry)

    @_in_threads
    def apply_kernel(
        self, sharp: ImageLike | Sequence[ImageLike], kernel: torch.Tensor | Sequence[torch.Tensor]
    ) -> ImageLike | list[ImageLike]:
        """Blur ``sharp`` with ``kernel`` (the model's F); a kernel made for another image size is resized.

        Args:
            sharp: an image, a batch, or a list of images.
            kernel: a ``(B or 1, C, h, w)`` kernel; for a list of images, one kernel shared by all or a list with
                one kernel per image.

        Returns:
            The blurred image(s), the same kind as ``sharp``.
        """
        if _is_list(sharp):
            images = _as_list("sharp", sharp)
            kernels = _as_list("kernel", kernel, len(images)) if _is_list(kernel) else [kernel] * len(images)
            return [self.model.apply_kernel(x, k) for x, k in zip(images, kernels)]
        if _is_list(kernel):
            raise TypeError("a list of kernels needs a list of images; for a batch tensor, torch.cat the kernels")
        return self.model.apply_kernel(sharp, kernel)

    # -- synthesis -----------------------------------------------------------------------------------------------
    @_in_threads
    def transfer(
        self,
        source_sharp: ImageLike | Sequence[ImageLike],
        source_blurry: ImageLike | Sequence[ImageLike],
        target_sharp: ImageLike | Sequence[ImageLike],
    ) -> ImageLike | list[ImageLike]:
        """The blur of the pair (``source_sharp``, ``source_blurry``) applied to ``target_sharp``.

        The target may have another size than the source: the kernel is resized to its grid, so each region of
        the target gets the blur of the same relative region of the source.

        Args:
            source_sharp: the sharp image(s) of the source pair(s).
            source_blurry: the blurry image(s) of the source pair(s).
            target_sharp: the image(s) to blur. One source pair can serve a whole target batch; a list of
                targets takes one source pair per target (lists on both sides) or one pair for all.

        Returns:
            The target(s) with the source's blur, the same kind as ``target_sharp``.
        """
        if _is_list(target_sharp) and _is_list(source_sharp):
            targets = _as_list("target_sharp", target_sharp)
            kernels = self.extract_kernel(_as_list("source_sharp", source_sharp, len(targets)), source_blurry)
            return self.apply_kernel(targets, kernels)
        return self.apply_kernel(target_sharp, self.extract_kernel(source_sharp, source_blurry))

    @_in_threads
    def sample(
        self, sharp: ImageLike | Sequence[ImageLike], n: int = 1, seed: int | None = None
    ) -> ImageLike | list[ImageLike]:
        """``n`` novel blurs of each image, with kernels drawn from the model's prior.

        Args:
            sharp: an image, a batch (each image gets its own kernels), or a list of images.
            n: how many blurry versions of each image.
            seed: the draws are a function of the seed (the same seed, the same blurs, on any device);
                ``None`` draws the seed from PyTorch's global generator (so ``torch.manual_seed`` fixes it).

        Returns:
            With ``n == 1``, the blurry image(s) in the kind of ``sharp``; with ``n > 1``, a list of ``n`` such
            results (the ``i``-th holds the ``i``-th blur of every image).
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        elif not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        generator = torch.Generator().manual_seed(seed)  # a CPU generator: the same draws on every device
        if _is_list(sharp):
            images = _as_list("sharp", sharp)
            draws = [[self._sample_one(img, generator) for img in images] for _ in range(n)]
        else:
            draws = [self._sample_one(sharp, generator) for _ in range(n)]
        return draws[0] if n == 1 else draws

    def _sample_one(self, sharp: ImageLike, generator: torch.Generator) -> ImageLike:
        batch, _, height, width = to_tensor(sharp, name="sharp")[0].shape
        kernel = self.model.sample_kernel(height, width, batch=batch, generator=generator)
        return self.model.apply_kernel(sharp, kernel)
