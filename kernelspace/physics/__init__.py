"""Imaging physics, low level and differentiable: camera response, camera-shake PSFs, blur operators, poses;
sensor noise and JPEG (:mod:`~kernelspace.physics.degrade`, the JPEG rounding without a gradient).

Everything here works on tensors in linear light unless it says otherwise, and follows one blur convention:
``blurry = conv2d(sharp_linear, psf[None, None])`` (PyTorch's cross-correlation), see
:mod:`kernelspace.physics.psf`.
"""

from .blur import fft_size, homography_blur, psf_blur, reflect_pad
from .camera import camera_homographies
from .degrade import Degradation, jpeg_compress, jpeg_tables, sensor_noise
from .eff import space_varying_blur
from .kernel_estimation import estimate_psf_field, project_simplex
from .psf import fit_canvas, psf_size_for, random_psf, rasterize_psf, shake_trajectory
from .response import Gamma, from_linear, to_linear

__all__ = [
    "Degradation",
    "Gamma",
    "camera_homographies",
    "estimate_psf_field",
    "fft_size",
    "fit_canvas",
    "from_linear",
    "homography_blur",
    "jpeg_compress",
    "jpeg_tables",
    "psf_blur",
    "psf_size_for",
    "random_psf",
    "rasterize_psf",
    "reflect_pad",
    "project_simplex",
    "sensor_noise",
    "shake_trajectory",
    "space_varying_blur",
    "to_linear",
]
