"""Deblurring: non-blind deconvolution (known PSF) and blind PSF estimation from the blurry image alone.

Work in progress (issue 5): :func:`deconvolve` is complete and reaches the non-blind limit on Levin et al. 2009;
:func:`estimate_psf` (blind) does not yet give usable kernels on real blur, see the module's notes.
"""

from .estimate import estimate_psf, fit_psf
from .nonblind import deconvolve, shrink_hyper_laplacian

__all__ = ["deconvolve", "estimate_psf", "fit_psf", "shrink_hyper_laplacian"]
