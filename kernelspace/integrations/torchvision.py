"""Kernel-space blur as a ``torchvision.transforms.v2`` transform.

:class:`~kernelspace.KernelSpaceAugment` already works inside ``v2.Compose`` when the sample is one image (a PIL
image, a tensor or a ``tv_tensors.Image``, a batch too; ``return_pair=True`` gives two ``tv_tensors.Image`` that
later transforms crop alike). A v2 sample is often more: ``(image, label)``, a dict, an image with its boxes and
masks. :class:`KernelSpaceBlur` is a real ``v2.Transform``: it blurs the sample's images (by v2's rules: every
``tv_tensors.Image`` and PIL image, or else the first plain tensor) and passes everything else through unchanged.
"""

from __future__ import annotations

from typing import Any

from ..augment import KernelSpaceAugment
from . import require

require("torchvision", "torchvision")

import PIL.Image  # noqa: E402 - after the check that names the extra
import torch  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

__all__ = ["KernelSpaceBlur"]


class KernelSpaceBlur(v2.Transform):
    """Random kernel-space blur of the images in a torchvision v2 sample, each image of a batch independently.

    Args:
        p: probability that an image is blurred.
        **augment: the other arguments of :class:`~kernelspace.KernelSpaceAugment` (``kernels``, ``source``,
            ``model``, ``pool_size``, ``pool_seed``, ``threads``); not ``return_pair``, which changes the sample's structure
            (use ``KernelSpaceAugment(return_pair=True)`` in ``v2.Compose`` for pairs).

    All images of one sample get the same draw, as with every v2 transform (a stereo pair is blurred alike); their
    batch sizes must agree. Parameters come from PyTorch's global generator, which DataLoader seeds per worker.
    Images are float (``v2.ToDtype(torch.float32, scale=True)`` first for uint8 tensors) in [0, 1].

    Example:
        >>> import torch
        >>> from torchvision import tv_tensors
        >>> from torchvision.transforms import v2
        >>> from kernelspace.models import KernelField
        >>> blur = KernelSpaceBlur(p=1.0, model=KernelField(cell=32, psf_size=7), pool_size=8)
        >>> pipeline = v2.Compose([v2.RandomHorizontalFlip(), blur])
        >>> image, label = pipeline(tv_tensors.Image(torch.rand(3, 32, 48)), 7)
        >>> type(image).__name__, tuple(image.shape), label
        ('Image', (3, 32, 48), 7)
    """

    # Not boxes, masks or videos (tensor subclasses too): images, and plain tensors, which v2 takes for images.
    _transformed_types = (tv_tensors.Image, PIL.Image.Image, lambda t: type(t) is torch.Tensor)

    def __init__(self, p: float = 0.5, **augment: Any) -> None:
        super().__init__()
        if augment.get("return_pair"):
            raise ValueError(
                "return_pair=True changes the sample's structure, which a v2 transform keeps; "
                "use kernelspace.KernelSpaceAugment(return_pair=True) inside v2.Compose for (sharp, blurry) pairs"
            )
        self.augment = KernelSpaceAugment(p=p, **augment)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        batch = next((int(t.shape[0]) for t in flat_inputs if isinstance(t, torch.Tensor) and t.ndim == 4), 1)
        return self.augment.forward_parameters((batch,))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.augment(inpt, params=params)
