"""The kernel-space blur as a deepinv Physics, and its kernel generator, on real images: the forward is the
model's F, noise is pluggable, k is the operator's parameter, and deepinv's gradient-descent reconstruction on
an L2 data fidelity reduces the measurement error (the default model and the published BKSNet architecture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelspace
from kernelspace.models import BKSNet

from .conftest import library

dinv = library("deepinv")
from kernelspace.integrations.deepinv import KernelSpaceGenerator, KernelSpacePhysics  # noqa: E402

SIDE = 128


@pytest.fixture(scope="module")
def sharp(photo: np.ndarray) -> torch.Tensor:
    """A real 128x128 RGB crop, (1, 3, 128, 128) in [0, 1]."""
    return torch.tensor(photo[60 : 60 + SIDE, 80 : 80 + SIDE]).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def model() -> kernelspace.KernelSpaceModel:
    return kernelspace.load_model(device="cpu")


def small_bks() -> BKSNet:
    """The published architecture, narrowed and randomly initialised (no published weights here)."""
    torch.manual_seed(0)
    return BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=64, n_blocks=1, use_vae=True).eval()


def rms(t: torch.Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a.detach() - b).pow(2).mean()))


def test_forward_is_the_models_blur_with_the_kernel_as_parameter(model, sharp: torch.Tensor) -> None:
    generator = KernelSpaceGenerator(model, img_size=(SIDE, SIDE))
    params = generator.step(batch_size=2, seed=0)
    assert list(params) == ["kernel"] and params["kernel"].shape[0] == 2
    assert torch.equal(generator.step(2, seed=0)["kernel"], params["kernel"])  # a seed reproduces
    assert not torch.equal(generator.step(2, seed=1)["kernel"], params["kernel"])
    physics = KernelSpacePhysics(model)
    with pytest.raises(ValueError, match="no kernel yet"):
        physics(sharp)
    physics.update(**params)  # deepinv's way of setting a generator's draw
    x = sharp.expand(2, -1, -1, -1)
    assert torch.equal(physics(x), model.apply_kernel(x, params["kernel"]))  # no noise by default
    other = generator.step(2, seed=5)["kernel"]
    assert torch.equal(physics(x, kernel=other), model.apply_kernel(x, other))  # given at the call, then kept
    assert torch.equal(physics.kernel, other)
    with pytest.raises(ValueError, match="latent kernel"):
        physics.update(kernel=torch.zeros(1, 3, 1, 1))


def test_noise_model_is_pluggable(model, sharp: torch.Tensor) -> None:
    k = KernelSpaceGenerator(model, img_size=(SIDE, SIDE)).step(1, seed=2)["kernel"]
    gaussian = dinv.physics.GaussianNoise(sigma=0.05, rng=torch.Generator().manual_seed(0))
    physics = KernelSpacePhysics(model, kernel=k, noise_model=gaussian)
    noise = physics(sharp) - physics.A(sharp)
    assert abs(float(noise.std()) - 0.05) < 0.005 and abs(float(noise.mean())) < 0.005
    physics.set_noise_model(dinv.physics.PoissonNoise(gain=1 / 50))
    assert not torch.equal(physics(sharp), physics.A(sharp))


def test_gradient_descent_reconstruction_reduces_the_measurement_error(model, sharp: torch.Tensor) -> None:
    physics = KernelSpacePhysics(model)
    physics.update(**KernelSpaceGenerator(model, img_size=(SIDE, SIDE)).step(1, seed=3))
    y = physics(sharp)
    solver = dinv.optim.GD(data_fidelity=dinv.optim.L2(), prior=dinv.optim.ZeroPrior(), stepsize=1.0, max_iter=30)
    estimate = solver(y, physics)  # starts from A_adjoint(y) = y
    before, after = rms(physics.A(y) - y), rms(physics.A(estimate) - y)
    assert after < 0.3 * before, (before, after)
    assert psnr(estimate, sharp) > psnr(y, sharp) + 2.0  # and it is closer to the sharp image
    dagger = physics.A_dagger(y)  # deepinv's own gradient-descent inverse
    assert rms(physics.A(dagger) - y) < 0.6 * before


def test_bksnet_architecture_runs_as_physics_with_prior_and_real_kernels(sharp: torch.Tensor) -> None:
    net = small_bks()
    generator = KernelSpaceGenerator(net, img_size=(SIDE, SIDE))
    physics = KernelSpacePhysics(net, noise_model=dinv.physics.GaussianNoise(sigma=0.01))
    physics.update(**generator.step(1, seed=0))
    with torch.no_grad():
        y = physics(sharp)
    solver = dinv.optim.GD(data_fidelity=dinv.optim.L2(), prior=dinv.optim.ZeroPrior(), stepsize=1.0, max_iter=4)
    estimate = solver(y, physics)
    before, after = rms(physics.A(y) - y), rms(physics.A(estimate) - y)
    assert after < 0.8 * before, (before, after)
    # A pool of real kernels, extracted from a (sharp, blurry) pair, for a model without a prior.
    plain = BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=64, n_blocks=1).eval()
    with pytest.raises(ValueError, match="no prior"):
        KernelSpaceGenerator(plain, img_size=(SIDE, SIDE))
    pool = plain.extract_kernel(sharp, y.clamp(0, 1))
    drawn = KernelSpaceGenerator(plain, img_size=(SIDE, SIDE), kernels=pool).step(3, seed=0)["kernel"]
    assert drawn.shape == (3, *pool.shape[1:]) and all(torch.equal(k, pool[0]) for k in drawn)


def test_kernel_can_be_estimated_through_the_operator(model, sharp: torch.Tensor) -> None:
    # Blind use: the kernel is the parameter being fitted, and gradients reach it through the physics.
    physics = KernelSpacePhysics(model)
    target = KernelSpaceGenerator(model, img_size=(SIDE, SIDE)).step(1, seed=4)["kernel"]
    y = physics(sharp, kernel=target)
    k = KernelSpaceGenerator(model, img_size=(SIDE, SIDE)).step(1, seed=6)["kernel"].clone().requires_grad_(True)
    loss = (physics(sharp, kernel=k) - y).pow(2).mean()
    (grad,) = torch.autograd.grad(loss, k)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
