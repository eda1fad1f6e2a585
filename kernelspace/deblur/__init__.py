"""Deblurring: non-blind deconvolution (known PSF) and blind PSF estimation from the blurry image alone.

:class:`BlindDeblurrer` / :func:`deblur` are the product (presets, tiling, any image kind); :func:`deconvolve`
(known PSF) and :func:`estimate_psf` (one uniform PSF from a blurry image) are its parts.
"""

import inspect
import sys
import types

from .blind import BlindDeblurrer, deblur
from .estimate import estimate_psf, fit_psf
from .nonblind import deconvolve, shrink_hyper_laplacian


class _CallablePackage(types.ModuleType):
    """``kernelspace.deblur`` names both this package and the function: calling the package calls :func:`deblur`,
    so ``kernelspace.deblur(img)`` and ``kernelspace.deblur.estimate_psf`` both work whichever import ran last.
    ``inspect.signature`` and ``help()`` show the function's: a user calling it wants its parameters."""

    __call__ = staticmethod(deblur)


__signature__ = inspect.signature(deblur)
_summary, _, _rest = inspect.getdoc(deblur).partition("\n")
__doc__ = f"{_summary}\n\nkernelspace.deblur{__signature__}\n{_rest}\n\nThe package kernelspace.deblur: {__doc__}"
sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["BlindDeblurrer", "deblur", "deconvolve", "estimate_psf", "fit_psf", "shrink_hyper_laplacian"]
