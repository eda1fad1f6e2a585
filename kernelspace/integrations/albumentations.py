"""Kernel-space blur as an albumentations transform.

:class:`KernelSpaceBlur` is an ``ImageOnlyTransform``: in ``A.Compose`` it blurs ``image`` (and ``images``,
``volume``: every slice alike) and leaves masks, boxes and keypoints as they are, since blur moves no geometry.
Its randomness is albumentations' own: ``A.Compose([...], seed=s)`` makes the blur, like every other transform
of the pipeline, the same on every run; NumPy's and PyTorch's global seeds play no part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..augment import KernelSpaceAugment
from . import require

A = require("albumentations", "albumentations")

__all__ = ["KernelSpaceBlur"]


class KernelSpaceBlur(A.ImageOnlyTransform):
    """Random blur from a kernel-space model on HxWxC numpy images (uint8, uint16, or float32 in [0, 1]).

    Args:
        p: probability that the image is blurred (albumentations draws it).
        **augment: the other arguments of :class:`~kernelspace.KernelSpaceAugment` (``kernels``, ``source``,
            ``model``, ``pool_size``, ``pool_seed``, ``threads``); each image gets a kernel of its own, drawn by
            that augmentation (from the prior by default, or from its pool). Not ``return_pair``: the sharp image is
            the one given.

    Images have 1, 3 or 4 channels (alpha is kept as it was); the result has the input's shape and dtype.

    Example:
        >>> import albumentations as A
        >>> import numpy as np
        >>> from kernelspace.models import KernelField
        >>> blur = KernelSpaceBlur(p=1.0, model=KernelField(cell=32, psf_size=7), pool_size=8)
        >>> image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
        >>> first = A.Compose([A.HorizontalFlip(), blur], seed=137)(image=image)["image"]
        >>> again = A.Compose([A.HorizontalFlip(), blur], seed=137)(image=image)["image"]
        >>> first.shape, first.dtype, np.array_equal(first, again), np.array_equal(first, image)
        ((32, 48, 3), dtype('uint8'), True, False)
    """

    def __init__(self, p: float = 0.5, **augment: Any) -> None:
        super().__init__(p=p)
        if augment.get("return_pair"):
            raise ValueError("return_pair is not available in albumentations: the sharp image is the one you gave")
        # Albumentations decides whether to blur; the augmentation only draws the kernel.
        self.augment = KernelSpaceAugment(p=1.0, **augment)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        # A torch generator seeded from albumentations' own: the same Compose seed, the same kernel.
        seed = int(self.random_generator.integers(0, 2**63 - 1))
        return {"blur": self.augment.forward_parameters((1,), torch.Generator().manual_seed(seed))}

    def apply(self, img: np.ndarray, blur: dict[str, torch.Tensor], **params: Any) -> np.ndarray:
        return self.augment(img, params=blur)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()
