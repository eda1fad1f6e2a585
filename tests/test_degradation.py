"""The degradation chain (issue 12): sensor noise and JPEG (kernelspace.physics.degrade), and KernelSpaceAugment's
blur -> noise -> clipping -> response -> JPEG with its parameters replayed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernelspace import KernelSpaceAugment
from kernelspace.models import BKSNet, KernelField
from kernelspace.physics.degrade import Degradation, jpeg_compress, sensor_noise


def small_model() -> KernelField:
    return KernelField(cell=32, psf_size=9, iterations=30)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def crops(photo: np.ndarray) -> torch.Tensor:
    """Six different 64x64 crops of a real photo, (6, 3, 64, 64) float in [0, 1]."""
    x = torch.tensor(photo).permute(2, 0, 1).float() / 255
    return torch.stack([x[:, 60 * i : 60 * i + 64, 40 * i : 40 * i + 64] for i in range(6)])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


# -- sensor noise -------------------------------------------------------------------------------------------------
def test_noise_variance_on_flat_patches_is_shot_times_signal_plus_read_squared() -> None:
    levels = torch.tensor([0.02, 0.2, 0.7])
    flat = levels.view(3, 1, 1, 1).expand(3, 3, 128, 128).contiguous()
    shot, read = torch.tensor([4e-3, 1e-3, 1e-4]), torch.tensor([5e-3, 1e-2, 1e-3])
    noisy = sensor_noise(flat, shot, read, torch.tensor([1, 2, 3]))
    measured = (noisy - flat).flatten(1).var(1)
    assert torch.allclose(measured, shot * levels + read**2, rtol=0.03)
    assert torch.allclose((noisy - flat).flatten(1).mean(1), torch.zeros(3), atol=2e-4)


def test_noise_realisation_is_a_function_of_its_seed_alone() -> None:
    x = torch.full((3, 3, 16, 16), 0.3)
    shot, read, seeds = torch.full((3,), 1e-3), torch.full((3,), 1e-3), torch.tensor([5, 6, 7])
    batch = sensor_noise(x, shot, read, seeds)
    alone = sensor_noise(x[1:2], shot[1:2], read[1:2], seeds[1:2])
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])
    off = sensor_noise(x, torch.tensor([0.0, 1e-3, 0.0]), torch.tensor([0.0, 1e-3, 0.0]), seeds)
    assert torch.equal(off[0], x[0]) and torch.equal(off[2], x[2]) and torch.equal(off[1], batch[1])


def test_the_chains_noise_on_a_flat_grey_has_the_sampled_level_in_linear_light() -> None:
    level = 0.3  # linear light; the model's response is x ** 2.2
    grey = torch.full((2, 3, 96, 96), level ** (1 / 2.2))
    d = Degradation(shot_noise=(2e-3, 2e-3), read_noise=(5e-3, 5e-3), p_jpeg=0.0)
    aug = KernelSpaceAugment(p=1.0, model=small_model(), degradation=d)
    out = aug(grey, generator=seeded(0))
    linear = out[:, :, 16:-16, 16:-16] ** 2.2  # away from the padded edges
    assert torch.allclose(linear.flatten(1).var(1), torch.full((2,), 2e-3 * level + 5e-3**2), rtol=0.08)


# -- JPEG -----------------------------------------------------------------------------------------------------
def _pillow_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return torch.tensor(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255


def test_jpeg_is_as_lossy_as_libjpeg_on_real_photos(crops: torch.Tensor) -> None:
    for quality in (30, 60, 80):
        ours = jpeg_compress(crops, torch.full((len(crops),), quality))
        for x, y in zip(crops, ours):
            pillow = _pillow_jpeg(x, quality)
            assert abs(psnr(y, x) - psnr(pillow, x)) < 0.25, quality
            assert psnr(y, pillow) > 38, quality  # close to the same image, not only as far from the original


def _blockiness(y: torch.Tensor) -> float:
    """Mean jump across the 8x8 block boundaries over the mean jump between other neighbouring columns."""
    jumps = (y[..., 1:] - y[..., :-1]).abs().mean((0, 1, 2))
    boundary = torch.arange(1, y.shape[-1]) % 8 == 0
    return float(jumps[boundary].mean() / jumps[~boundary].mean())


def test_jpeg_error_and_blockiness_grow_as_the_quality_falls(crops: torch.Tensor) -> None:
    qualities = (100, 95, 80, 60, 30, 10)
    coded = [jpeg_compress(crops, torch.full((len(crops),), q)) for q in qualities]
    errors = [psnr(y, crops) for y in coded]
    blockiness = [_blockiness(y) for y in coded]
    assert errors == sorted(errors, reverse=True) and errors[0] > 45  # quality 100: near identity
    assert blockiness[0] < 1.1 < blockiness[-2] < blockiness[-1]
    grey = jpeg_compress(crops[:2, :1], torch.tensor([10, 100]))
    assert grey.shape == (2, 1, 64, 64) and psnr(grey[1], crops[1, :1]) > 45 > psnr(grey[0], crops[0, :1])


def test_sampled_parameters_stay_in_their_ranges() -> None:
    d = Degradation(shot_noise=(1e-4, 1e-2), read_noise=(1e-3, 2e-3), jpeg_quality=(60, 95), p_noise=0.7, p_jpeg=0.3)
    params = d.sample(4000, seeded(0))
    quality = params["jpeg_quality"]
    assert quality.dtype == torch.int64 and int(quality.min()) == 60 and int(quality.max()) == 95
    assert 1e-4 <= float(params["noise_shot"].min()) and float(params["noise_shot"].max()) <= 1e-2
    assert 1e-3 <= float(params["noise_read"].min()) and float(params["noise_read"].max()) <= 2e-3
    assert abs(float(params["noise_shot"].log10().median()) + 3) < 0.1  # log-uniform: the median decade is 1e-3
    assert abs(float(params["noise_prob"].mean()) - 0.7) < 0.03 and abs(float(params["jpeg_prob"].mean()) - 0.3) < 0.03
    again = d.sample(4000, seeded(0))
    assert all(torch.equal(params[k], again[k]) for k in Degradation.PARAM_KEYS)
    assert torch.equal(params["response_gamma"], torch.zeros(4000))  # no response of its own: the kernel's
    gamma = Degradation(response=(1.0, 2.2)).sample(4000, seeded(0))["response_gamma"]
    assert 1.0 <= float(gamma.min()) < 1.01 and 2.19 < float(gamma.max()) <= 2.2 and abs(float(gamma.mean()) - 1.6) < 0.03


def test_a_response_of_its_own_blurs_like_a_model_with_that_response(crops: torch.Tensor) -> None:
    # The response stage at (1, 1) turns the default prior's gamma-2.2 blur into the blur of the stored values:
    # exactly what a model with a linear response gives from the same kernel seeds.
    quiet = {"p_noise": 0.0, "p_jpeg": 0.0}
    linear = KernelSpaceAugment(p=1.0, model=KernelField(cell=32, psf_size=9, gammas=[1.0]))
    expected = linear(crops, generator=seeded(3))
    own = KernelSpaceAugment(p=1.0, model=KernelField(cell=32, psf_size=9),
                             degradation=Degradation(response=(1.0, 1.0), **quiet))
    assert torch.equal(own(crops, generator=seeded(3)), expected)
    ranged = KernelSpaceAugment(p=1.0, model=own.model, degradation=Degradation(response=(1.0, 2.2), **quiet))
    out = ranged(crops, generator=seeded(3))
    assert torch.equal(ranged(crops, params=ranged._params), out)  # it replays
    gamma = ranged._params["response_gamma"]
    kernels = own.model.with_response(ranged.kernels(ranged._params, 64, 64), gamma)
    assert torch.equal(own.model.response(kernels).flatten(), gamma)
    assert torch.equal(out, own.model.apply_kernel(crops, kernels))
    with pytest.raises(ValueError, match="kernels hold no camera response: Degradation.response=.... needs"):
        BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1).with_response(kernels, gamma)


# -- the chain in KernelSpaceAugment ----------------------------------------------------------------------------
def test_the_chain_replays_exactly_and_draws_the_same_kernels_as_the_blur_alone(crops: torch.Tensor) -> None:
    model = small_model()
    blur = KernelSpaceAugment(p=0.7, model=model)
    chain = KernelSpaceAugment(p=0.7, model=model, degradation=Degradation(p_noise=0.7, p_jpeg=0.6))
    params = chain.forward_parameters(crops.shape, seeded(0))  # every combination of the gates
    out = chain(crops, params=params)
    assert torch.equal(chain.apply(crops, params), out) and torch.equal(chain(crops, generator=seeded(0)), out)
    blur_params = blur.forward_parameters(crops.shape, seeded(0))
    assert set(params) - set(blur_params) == set(Degradation.PARAM_KEYS)
    assert all(torch.equal(blur_params[k], params[k]) for k in blur_params)
    listed = chain(list(crops), params=params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(listed, out))

    # Each stage where its gate says, and nowhere else.
    plain = blur(crops, params=params)
    blurred, noisy, coded = (params[k] > 0.5 for k in ("batch_prob", "noise_prob", "jpeg_prob"))
    assert all(bool(g.any()) for g in (~blurred, blurred & ~noisy & ~coded, blurred & noisy, blurred & coded))
    assert torch.equal(out[~blurred], crops[~blurred])
    assert torch.equal(out[blurred & ~noisy & ~coded], plain[blurred & ~noisy & ~coded])
    assert all(not torch.allclose(o, p, atol=1e-3) for o, p in zip(out[blurred & noisy], plain[blurred & noisy]))
    on_levels = out[blurred & coded] * 255
    assert torch.allclose(on_levels, on_levels.round(), atol=1e-4)  # JPEG's 8-bit levels


def test_without_the_chain_the_output_is_the_blur_alone(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=1.0, model=small_model())
    out = aug(crops, generator=seeded(1))
    assert set(aug._params) == {"batch_prob", "kernel_index", "kernel_seed", "forward_input_shape"}
    assert torch.equal(out, aug.model.apply_kernel(crops, aug.kernels(aug._params, 64, 64)))
    silent = KernelSpaceAugment(p=1.0, model=aug.model, degradation=Degradation(p_noise=0.0, p_jpeg=0.0))
    assert torch.equal(silent(crops, generator=seeded(1)), out)


def test_return_pair_gives_the_input_and_an_aligned_degraded_image(crops: torch.Tensor) -> None:
    d = Degradation(shot_noise=(1e-3, 1e-3), read_noise=(2e-3, 2e-3), jpeg_quality=(70, 70), p_jpeg=1.0)
    aug = KernelSpaceAugment(p=1.0, model=small_model(), return_pair=True, degradation=d)
    sharp, blurry = aug(crops, generator=seeded(2))
    assert torch.equal(sharp, crops)
    plain = aug.model.apply_kernel(crops, aug.kernels(aug._params, 64, 64))

    def error(dy: int, dx: int) -> float:  # the degraded image against the blur alone, shifted
        return float((blurry.roll((dy, dx), (-2, -1)) - plain)[..., 8:-8, 8:-8].pow(2).mean())

    assert min(((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)), key=lambda s: error(*s)) == (0, 0)
    assert 25 < psnr(blurry, plain) < 45  # degraded, but the same picture


def test_bksnet_decodes_its_output_for_the_sensor() -> None:
    net = BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1)
    x = torch.rand(1, 3, 64, 64, generator=seeded(0))
    k = net.extract_kernel(x, x)
    assert torch.allclose(net.apply_kernel(x, k, sensor=lambda t: t), net.apply_kernel(x, k).clamp(0, 1), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shot_noise": (0.02, 0.01)}, r"shot_noise must be a \(low, high\) pair of numbers with 0 <= low <= high"),
        ({"read_noise": 0.01}, "read_noise must be a .low, high. pair of numbers"),
        ({"read_noise": (0.0, 0.01)}, r"log-uniformly, so its low end must be above 0 \(or give \(0, 0\)"),
        ({"jpeg_quality": (50, 101)}, "jpeg_quality must be a .low, high. pair of integers with 1 <= low"),
        ({"jpeg_quality": (60.5, 90)}, "pair of integers"),
        ({"p_noise": -0.1}, r"p_noise must be a probability in \[0, 1\], got -0.1"),
        ({"p_jpeg": True}, "p_jpeg must be a probability"),
        ({"response": (0.0, 2.2)}, "response exponents must be above 0"),
        ({"response": (2.2, 1.0)}, "response must be a .low, high. pair of numbers"),
    ],
)
def test_bad_degradation_settings_say_what_is_accepted(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Degradation(**kwargs)


def test_bad_chain_arguments_and_params_are_refused(crops: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="degradation must be None .blur only. or a kernelspace.physics.degrade"):
        KernelSpaceAugment(model=small_model(), degradation={"jpeg_quality": (60, 95)})
    aug = KernelSpaceAugment(p=1.0, model=small_model(), degradation=Degradation())
    blur_only = KernelSpaceAugment(p=1.0, model=aug.model).forward_parameters(crops.shape, seeded(0))
    with pytest.raises(ValueError, match="params must be a dict with .*noise_seed, jpeg_prob, jpeg_quality"):
        aug(crops, params=blur_only)
    params = aug.forward_parameters(crops.shape, seeded(0))
    with pytest.raises(ValueError, match=r"jpeg_quality'\] must lie in \[1, 100\]"):
        aug(crops, params={**params, "jpeg_quality": params["jpeg_quality"] + 100})
    with pytest.raises(ValueError, match="must be finite and at least 0"):
        aug(crops, params={**params, "noise_read": -params["noise_read"]})
    with pytest.raises(ValueError, match=r"response_gamma'\] must lie in \[0, 10\]"):
        aug(crops, params={**params, "response_gamma": params["response_gamma"] - 1})
    with pytest.raises(ValueError, match="jpeg_compress takes RGB or grey images"):
        jpeg_compress(torch.rand(1, 2, 8, 8), torch.tensor([90]))
