"""kernelspace: the blur kernel space of Tran et al. (CVPR 2021) as a library.

A kernel extractor G(x, y) -> k encodes the blur between a sharp image x and a blurry image y; a blur
operator F(x, k) -> y applies that blur to any sharp image. See :func:`load_model` and
:class:`~kernelspace.models.KernelSpaceModel`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kernelspace")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from .device import resolve_device
from .hub import ModelNotFoundError, convert_checkpoint, load_model
from .io import load_image, save_image
from .data import SyntheticBlur
from .models import BKSNet, KernelField, KernelSpaceModel
from .viz import render_kernel
from . import deblur  # the package is callable: kernelspace.deblur(img) is kernelspace.deblur.deblur(img)
from .deblur import BlindDeblurrer
from .synthesis import BlurSynthesizer
from .augment import KernelSpaceAugment
from .physics.degrade import Degradation

__all__ = [
    "__version__",
    "BKSNet",
    "BlindDeblurrer",
    "BlurSynthesizer",
    "Degradation",
    "KernelField",
    "KernelSpaceModel",
    "KernelSpaceAugment",
    "ModelNotFoundError",
    "SyntheticBlur",
    "convert_checkpoint",
    "deblur",
    "load_image",
    "load_model",
    "render_kernel",
    "resolve_device",
    "save_image",
]
