"""Models refuse what would crash or allocate without bound, and accept every valid size: configuration ranges,
kernels that would give black or white images, sizes of zero, and PSF sizes of 3 mod 4."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kernelspace.models import BKSNet, KernelField


@pytest.mark.parametrize("psf_size", [3, 7, 11, 43])
def test_extract_kernel_works_for_psf_sizes_of_3_mod_4(levin_pair, psf_size):
    sharp, blurry = (a[:128, :128] for a in levin_pair)
    model = KernelField(cell=64, psf_size=psf_size, iterations=10, refine_iterations=5)
    kernel = model.extract_kernel(sharp, blurry)  # before: RuntimeError "shape '[1, 2, 2, 7, 7]' is invalid"
    assert tuple(kernel.shape) == (1, psf_size**2 + 1, 2, 2)
    psf = model.psf_field(kernel)
    assert torch.allclose(psf.sum((-2, -1)), torch.ones(1, 2, 2)) and bool((psf >= 0).all())
    reblurred = np.asarray(model.apply_kernel(sharp, kernel), dtype=np.float64)
    assert np.abs(reblurred - blurry).mean() < np.abs(sharp.astype(np.float64) - blurry).mean()


def test_apply_kernel_refuses_kernels_that_give_black_or_white_images(photo):
    model = KernelField(cell=64, psf_size=9)
    image = photo[:64, :64]
    kernel = model.sample_kernel(64, 64, seed=0)
    no_gamma = kernel.clone()
    no_gamma[:, -1] = 0.0
    for bad, message in ((kernel * 0, "all zero or negative"), (-kernel, "all zero or negative"),
                         (no_gamma, "must be positive"), (torch.cat([kernel[:, :-1], -kernel[:, -1:]], 1), "must be positive")):
        with pytest.raises(ValueError, match=message):
            model.apply_kernel(image, bad)
    # A kernel under optimisation may pass through such a cell (deblurring by gradient), a given one may not.
    moving = torch.cat([kernel[:, :-1] * 0, kernel[:, -1:]], 1).requires_grad_(True)
    assert model.apply_kernel(torch.rand(1, 3, 64, 64), moving).shape == (1, 3, 64, 64)


def test_sample_kernel_refuses_empty_sizes():
    model = KernelField(cell=64, psf_size=9)
    for args, kwargs in (((0, 64), {}), ((64, -1), {}), ((64, 64), {"batch": 0}), ((64.5, 64), {})):
        with pytest.raises((ValueError, TypeError), match="must be an integer"):
            model.sample_kernel(*args, seed=0, **kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    (BKSNet, {"front_RBs": 10**7}, "front_RBs must be an integer from 0 to 100"),
    (BKSNet, {"nf": 0}, "nf must be an integer from 1 to 256"),
    (BKSNet, {"use_vae": "yes"}, "use_vae must be true or false"),
    (KernelField, {"psf_size": 100001}, "psf_size must be an integer from 1 to 255"),
    (KernelField, {"psf_size": "7"}, "psf_size must be an integer"),
    (KernelField, {"iterations": 10**12}, "iterations must be an integer from 1 to 100000"),
    (KernelField, {"gammas": [2.2, -1]}, "gammas must be a number above 0"),
    (KernelField, {"tikhonov": float("nan")}, "tikhonov must be a number"),
    (KernelField, {"cell": 10**6}, "cell must be an integer from 8 to 4096"),
])
def test_constructors_check_their_arguments_before_allocating(cls, kwargs, message):
    start = time.perf_counter()
    with pytest.raises((ValueError, TypeError), match=message):
        cls(**kwargs)
    assert time.perf_counter() - start < 1
