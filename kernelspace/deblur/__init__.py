"""Deblurring: non-blind deconvolution (known PSF) and blind PSF estimation from the blurry image alone.

:class:`BlindDeblurrer` / :func:`deblur` are the product (presets, tiling, any image kind); :func:`deconvolve`
(known PSF) and :func:`estimate_psf` (one uniform PSF from a blurry image) are its parts.
"""

import sys
import types
from typing import Any

from .blind import BlindDeblurrer, deblur
from .estimate import estimate_psf, fit_psf
from .nonblind import deconvolve, shrink_hyper_laplacian


class _CallablePackage(types.ModuleType):
    """``kernelspace.deblur`` names both this package and the function: calling the package calls :func:`deblur`,
    so ``kernelspace.deblur(img)`` and ``kernelspace.deblur.estimate_psf`` both work whichever import ran last."""

    def __call__(self, image: Any, **options: Any) -> Any:
        return deblur(image, **options)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["BlindDeblurrer", "deblur", "deconvolve", "estimate_psf", "fit_psf", "shrink_hyper_laplacian"]
