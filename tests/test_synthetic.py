"""Synthetic blur: camera response, camera-shake PSFs, blur operators and SyntheticBlur, checked against
direct computations (conv2d, exact inverses, identities) rather than stored numbers."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelspace.data import BlurParams, SyntheticBlur
from kernelspace.physics import (
    camera_homographies,
    from_linear,
    homography_blur,
    psf_blur,
    psf_size_for,
    random_psf,
    rasterize_psf,
    reflect_pad,
    shake_trajectory,
    to_linear,
)

QUIET = dict(p_saturation=0.0, shot_noise=(0, 0), read_noise=(0, 0))  # blur only: no highlights, no noise
STILL = dict(max_extent=0.0, min_extent=0.0, max_offset=0.0, max_roll=0.0, max_tilt=0.0)  # a camera that never moved


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 2, height: int = 48, width: int = 56, seed: int = 0) -> torch.Tensor:
    """8-bit-valued smooth-plus-texture images, so that exact identities can be checked after quantisation."""
    g = _gen(seed)
    coarse = torch.rand(batch, 3, 6, 7, generator=g)
    low = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    x = 0.8 * low + 0.2 * torch.rand(batch, 3, height, width, generator=g)
    return (x * 255).round() / 255


def _conv_channels(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """conv2d of each channel of one (1, C, H, W) image with one (S, S) PSF, no padding (the definition)."""
    return F.conv2d(image.transpose(0, 1), psf[None, None]).transpose(0, 1)


def _gradient_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


# -- camera response -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [2.2, 1.8, "srgb"])
def test_response_is_exactly_invertible_with_finite_gradients(gamma):
    x = torch.linspace(0, 1, 10001, dtype=torch.float64, requires_grad=True)
    assert (to_linear(from_linear(x, gamma), gamma) - x).abs().max() < 1e-12
    assert (from_linear(to_linear(x, gamma), gamma) - x).abs().max() < 1e-12
    for f in (to_linear, from_linear):
        (grad,) = torch.autograd.grad(f(x, gamma).sum(), x)
        assert torch.isfinite(grad).all() and (grad > 0).all(), f.__name__  # finite at 0, strictly increasing
    assert to_linear(torch.tensor(0.5, dtype=torch.float64), 2.2) == pytest.approx(0.5**2.2)
    # sRGB values from the standard's own formula at a few points
    v = torch.tensor([0.02, 0.2, 0.7], dtype=torch.float64)
    standard = [0.02 / 12.92, ((0.2 + 0.055) / 1.055) ** 2.4, ((0.7 + 0.055) / 1.055) ** 2.4]
    assert torch.allclose(to_linear(v, "srgb"), torch.tensor(standard, dtype=torch.float64))
    # out-of-range values (noise, highlights) never give NaN
    assert torch.isfinite(from_linear(torch.tensor([-0.1, 1.5]), gamma)).all()


# -- trajectories and PSFs -------------------------------------------------------------------------------------


def test_psf_is_nonnegative_sums_to_one_and_centred_on_the_paths_mean():
    paths = shake_trajectory(_gen(0), batch=64)
    psf = rasterize_psf(paths, psf_size_for(35.0, 5.0))
    assert psf.shape == (64, 47, 47) and (psf >= 0).all()
    assert torch.allclose(psf.sum((1, 2)), torch.ones(64), atol=1e-5)
    c = 23
    ys, xs = torch.meshgrid(torch.arange(47.0) - c, torch.arange(47.0) - c, indexing="ij")
    centroid = torch.stack([(psf * xs).sum((1, 2)), (psf * ys).sum((1, 2))], -1)
    time_mean = 0.5 * (paths[:, 1:] + paths[:, :-1]).mean(1)  # each segment is an equal slice of time
    assert (centroid - time_mean).abs().max() < 1e-3
    one = random_psf(_gen(1), size=51)
    assert one.shape == (51, 51) and (one >= 0).all() and abs(float(one.sum()) - 1) < 1e-5
    # Each PSF depends on its own path alone, not on the paths rasterised beside it (per-sample seeds rely on it).
    torch.testing.assert_close(torch.stack([rasterize_psf(p, 47) for p in paths[:4]]), psf[:4], atol=1e-7, rtol=0)


def test_rasterize_orientation_and_no_gaps():
    # A point at (x, y) = (3, -2) puts its weight on psf[c - 2, c + 3].
    psf = rasterize_psf(torch.tensor([[3.0, -2.0]]), 9)
    assert psf[4 - 2, 4 + 3] == 1 and psf.sum() == 1
    # A fast 30-px stroke sampled at only 2 points is drawn densely: every pixel on its row gets ink, evenly.
    line = rasterize_psf(torch.tensor([[-15.0, 0.0], [15.0, 0.0]]), 33)
    row = line[16, 1:32]
    assert (row > 0).all() and row[1:-1].max() / row[1:-1].min() < 1.01
    assert line.sum() == pytest.approx(1.0) and float(line[16].sum()) == pytest.approx(1.0)


def test_trajectory_extents_cover_real_blur_and_offsets_are_random():
    paths = shake_trajectory(_gen(0), batch=1000)  # defaults: extents 3..35 px, offsets up to 5 px
    extent = (paths.amax(1) - paths.amin(1)).amax(-1)
    assert extent.min() >= 3 - 1e-3 and extent.max() <= 35 + 1e-3
    assert extent.min() < 4 and extent.max() > 34  # the whole range is reached
    assert (extent < 7).float().mean() > 0.08 and (extent > 31).float().mean() > 0.08  # uniform: 12.5% each
    assert (extent >= 13).float().mean() > 0.6  # Levin's real kernels span 13-27 px: most paths are that long
    centre_of_mass = 0.5 * (paths[:, 1:] + paths[:, :-1]).mean(1)
    radius = centre_of_mass.norm(dim=-1)
    assert (radius > 1).float().mean() > 0.8 and radius.max() > 4  # offsets of a few px, not centred
    half = 35 / 2 + 5
    assert paths.abs().max() <= half + 1e-3  # always fits the canvas psf_size_for() chooses
    still = shake_trajectory(_gen(0), max_extent=0.0, min_extent=0.0, max_offset=0.0)
    assert still.abs().max() == 0


def test_trajectory_and_psf_are_seeded():
    assert torch.equal(shake_trajectory(_gen(3), batch=4), shake_trajectory(_gen(3), batch=4))
    assert not torch.equal(shake_trajectory(_gen(3), batch=4), shake_trajectory(_gen(4), batch=4))
    assert torch.equal(random_psf(_gen(3)), random_psf(_gen(3)))


# -- blur operators --------------------------------------------------------------------------------------------


def test_psf_blur_equals_padded_conv2d():
    x = torch.rand(3, 3, 40, 33, generator=_gen(0), dtype=torch.float64)
    k = random_psf(_gen(1), batch=3, max_extent=15.0, max_offset=2.0).double()
    pad = k.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    direct = torch.cat([_conv_channels(padded[i : i + 1], k[i]) for i in range(3)])
    assert torch.allclose(psf_blur(x, k), direct, atol=1e-10)
    shared = psf_blur(x, k[0])  # one PSF for the whole batch
    assert torch.allclose(shared[1:2], psf_blur(x[1:2], k[:1]), atol=1e-12)
    # images smaller than the PSF are mirrored in rounds
    tiny = psf_blur(torch.rand(1, 1, 5, 4), random_psf(_gen(2)))
    assert tiny.shape == (1, 1, 5, 4) and torch.isfinite(tiny).all()
    assert reflect_pad(torch.arange(3.0).view(1, 1, 1, 3), 1).shape == (1, 1, 3, 5)


def test_homography_blur_of_translations_equals_psf_blur():
    # The same instants as warps (bilinear sampling) and as a PSF (bilinear splatting) are the same operator.
    x = torch.rand(1, 3, 40, 40, generator=_gen(0), dtype=torch.float64)
    path = torch.tensor([[0.0, 0.0], [2.5, 1.0], [4.0, 3.25], [3.0, 5.5]])
    frac = (torch.arange(8) + 0.5) / 8  # 8 instants per segment, at the middles of equal time slices
    fine = (path[:-1, None] + (path[1:] - path[:-1])[:, None] * frac[:, None]).reshape(-1, 2)
    homs = camera_homographies(fine, torch.zeros(len(fine), 3), 40, 40, 100.0)[None]
    warped = homography_blur(x, homs)
    longest = float((path[1:] - path[:-1]).norm(dim=-1).max())
    psf = rasterize_psf(path, 15, spacing=longest / 7.5)  # the rasteriser then uses the same 8 per segment
    convolved = psf_blur(x, psf.double())
    assert torch.allclose(warped[..., 8:-8, 8:-8], convolved[..., 8:-8, 8:-8], atol=1e-6)


def test_camera_homographies_keep_the_centre_on_the_trajectory():
    rotation = torch.tensor([[0.03, 0.01, -0.02]], dtype=torch.float64)
    hom = camera_homographies(torch.tensor([[2.0, -3.0]]), rotation, 61, 81, 80.0)
    centre = hom[0] @ torch.tensor([40.0, 30.0, 1.0], dtype=torch.float64)
    assert torch.allclose(centre[:2] / centre[2], torch.tensor([42.0, 27.0], dtype=torch.float64))
    corner = hom[0] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    moved = corner[:2] / corner[2] - torch.tensor([2.0, -3.0], dtype=torch.float64)
    assert moved.abs().max() > 0.5  # off the centre, the rotation shows


# -- SyntheticBlur ---------------------------------------------------------------------------------------------


def test_seeded_calls_are_bit_identical_and_seeds_differ():
    blur = SyntheticBlur(p_nonuniform=0.5, p_saturation=0.5)
    x = _images(4)
    a, b = blur(x, seed=7), blur(x, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(blur(x, generator=_gen(7)), a)  # a seed is a fresh generator with that seed
    assert not torch.equal(blur(x, seed=8), a)
    params = blur.sample_params(4, 48, 56, _gen(7))
    assert torch.equal(blur.apply(x, params), a)
    # a subset of the parameters replays those images exactly, noise included
    assert torch.equal(blur.apply(x[2:3], params[2]), a[2:3])
    assert torch.equal(blur.apply(x[[1, 3]], params[[1, 3]]), a[[1, 3]])


def test_output_shape_dtype_range_and_quantisation():
    blur = SyntheticBlur(p_nonuniform=0.5, p_saturation=1.0)
    cases = [((3, 3, 37, 50), torch.float32), ((2, 3, 64, 64), torch.float64), ((1, 1, 9, 7), torch.float32)]
    for shape, dtype in cases:
        x = torch.rand(shape, generator=_gen(1), dtype=dtype)
        y, psf = blur(x, seed=1, return_psf=True)
        assert y.shape == x.shape and y.dtype == dtype and psf.shape == (shape[0], 47, 47)
        assert y.min() >= 0 and y.max() <= 1
        assert torch.equal((y * 255).round(), y * 255)
    raw = SyntheticBlur(quantize=False)(torch.rand(1, 3, 32, 32), seed=0)
    assert not torch.equal((raw * 255).round(), raw * 255)


def test_uniform_delta_without_noise_or_saturation_is_the_identity():
    x = _images(3)
    for gamma in ("srgb", 2.2):
        blur = SyntheticBlur(p_nonuniform=0.0, gamma=gamma, **STILL, **QUIET)
        y, psf = blur(x, seed=0, return_psf=True)
        assert torch.equal(y, x)  # 8-bit input: quantisation gives it back bit for bit
        assert psf.shape[1:] == (3, 3) and psf[:, 1, 1].eq(1).all()  # the smallest canvas: a delta
    smooth = torch.rand(2, 3, 30, 30, generator=_gen(2))  # not on 8-bit levels: within half a level
    assert (SyntheticBlur(p_nonuniform=0.0, **STILL, **QUIET)(smooth, seed=0) - smooth).abs().max() <= 0.5 / 255 + 1e-6


def test_uniform_blur_equals_conv2d_in_linear_light_away_from_borders():
    x = _images(3, 64, 72)
    blur = SyntheticBlur(p_nonuniform=0.0, quantize=False, **QUIET)
    params = blur.sample_params(3, 64, 72, _gen(3))
    y, psf = blur.apply(x, params, return_psf=True)
    assert torch.equal(psf, params.psf) and params.modes == ["uniform"] * 3
    linear = to_linear(x, "srgb")
    direct = torch.cat([_conv_channels(linear[i : i + 1], psf[i]) for i in range(3)])
    c = psf.shape[-1] // 2  # conv2d without padding: output pixel (i, j) is the blurred pixel (i + c, j + c)
    inner = y[..., c:-c, c:-c]
    assert torch.allclose(inner, from_linear(direct, "srgb"), atol=2e-5)
    assert (inner - x[..., c:-c, c:-c]).abs().mean() > 0.01  # and it did blur
    quantised = SyntheticBlur(p_nonuniform=0.0, **QUIET).apply(x, params)
    assert (quantised[..., c:-c, c:-c] - from_linear(direct, "srgb")).abs().max() <= 0.5 / 255 + 1e-5


def test_nonuniform_blur_with_zero_motion_is_the_identity():
    x = _images(2)
    blur = SyntheticBlur(p_nonuniform=1.0, **STILL, **QUIET)
    params = blur.sample_params(2, 48, 56, _gen(0))
    assert params.modes == ["nonuniform", "nonuniform"]
    assert torch.equal(blur.apply(x, params), x)


def test_nonuniform_without_rotation_matches_uniform_and_rotation_varies_over_the_frame():
    x = _images(2, 64, 64)
    blur = SyntheticBlur(
        p_nonuniform=1.0, max_roll=0.0, max_tilt=0.0, quantize=False, pose_spacing=0.25, max_poses=1000, **QUIET
    )
    params = blur.sample_params(2, 64, 64, _gen(4))
    warped = blur.apply(x, params)
    params.nonuniform[:] = False  # the same trajectory as one PSF
    convolved = blur.apply(x, params)
    assert (warped - convolved)[..., 24:-24, 24:-24].abs().mean() < 2e-4
    # Roll only: the centre stays sharp, the corners smear.
    roll = SyntheticBlur(p_nonuniform=1.0, **{**STILL, "max_roll": 20.0}, **QUIET)
    y = roll(x, seed=1)
    change = (y - x).abs()
    assert change[..., 28:36, 28:36].mean() < 0.25 * change[..., :8, :8].mean()


def test_saturated_highlights_smear_into_clipped_streaks():
    x = torch.full((1, 3, 64, 64), 51 / 255)
    x[..., 30:34, 30:34] = 1.0  # a small clipped light
    kw = dict(p_nonuniform=0.0, min_extent=20.0, max_extent=20.0, max_offset=0.0, shot_noise=(0, 0), read_noise=(0, 0))
    plain = SyntheticBlur(p_saturation=0.0, **kw)(x, seed=0)
    boosted = SyntheticBlur(p_saturation=1.0, highlight_gain=(20.0, 20.0), **kw)(x, seed=0)
    assert plain.max() < 1  # blur dims a light that was exactly at the sensor's limit...
    assert (boosted == 1).sum() > 16  # ...but a brighter-than-recorded light leaves a saturated streak
    assert torch.equal(boosted[..., :8, :8], plain[..., :8, :8])  # away from the light nothing changes


def test_noise_is_poisson_gaussian_in_linear_light():
    shot, read = 2e-3, 4e-3
    blur = SyntheticBlur(
        p_nonuniform=0.0, p_saturation=0.0, shot_noise=(shot, shot), read_noise=(read, read), quantize=False
    )
    for level in (0.3, 0.8):
        x = torch.full((1, 3, 96, 96), level)
        signal = float(to_linear(torch.tensor(level), "srgb"))
        residual = to_linear(blur(x, seed=0), "srgb") - signal  # a flat image is unchanged by any blur
        expected = (shot * signal + read**2) ** 0.5
        assert float(residual.std()) == pytest.approx(expected, rel=0.05)
        assert abs(float(residual.mean())) < 0.1 * expected


def test_real_photo_gets_blurrier(photo):
    crop = torch.from_numpy(np.ascontiguousarray(photo[:128, :128])).permute(2, 0, 1)[None].float() / 255
    batch = crop.expand(4, -1, -1, -1)
    sharp_energy = _gradient_energy(crop)
    for nonuniform in (0.0, 1.0):
        y = SyntheticBlur(p_nonuniform=nonuniform, shot_noise=(0, 0), read_noise=(0, 0))(batch, seed=0)
        for i in range(4):
            assert _gradient_energy(y[i]) < 0.8 * sharp_energy
    noisy = SyntheticBlur(min_extent=10.0)(batch, seed=0)  # with the default noise, long blur still wins
    assert max(_gradient_energy(noisy[i]) for i in range(4)) < sharp_energy


def test_params_hold_everything_random():
    blur = SyntheticBlur(p_nonuniform=0.5)
    p = blur.sample_params(6, 32, 40, _gen(0))
    assert isinstance(p, BlurParams) and p.batch_size == 6 and (p.height, p.width) == (32, 40)
    assert p.trajectory.shape == (6, 128, 2) and p.rotation.shape == (6, 128, 3)
    assert p.rotation[~p.nonuniform].abs().max() == 0
    k = p.pose_weights.shape[1]
    assert p.homographies.shape == (6, k, 3, 3)
    assert torch.allclose(p.pose_weights[p.nonuniform].sum(1), torch.ones(int(p.nonuniform.sum()), dtype=torch.float64))
    assert (p.highlight_gain >= 1).all() and (p.shot_noise > 0).all() and (p.read_noise > 0).all()
    assert p.noise_seeds.shape == (6,) and len(set(p.noise_seeds.tolist())) == 6


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p_nonuniform=1.5), r"p_nonuniform must be a number in \[0.0, 1.0\]"),
        (dict(max_extent=-1.0), "max_extent must be"),
        (dict(min_extent=10.0, max_extent=5.0), "min_extent .* must not exceed max_extent"),
        (dict(psf_size=48), "psf_size must be an odd integer >= 47"),
        (dict(psf_size=31), "psf_size must be an odd integer >= 47"),
        (dict(shot_noise=(0.01, 0.001)), "low <= high"),
        (dict(read_noise="loud"), r"read_noise must be a \(low, high\) pair"),
        (dict(highlight_gain=(0.5, 2.0)), r"highlight_gain\[0\] must be a number in \[1.0"),
        (dict(gamma="log"), "gamma must be a positive number or 'srgb'"),
        (dict(n_steps=1), "n_steps must be an integer >= 2"),
        (dict(pose_spacing=0), "pose_spacing must be a number in \\(0.0"),
        (dict(quantize="yes"), "quantize must be True or False"),
    ],
)
def test_bad_constructor_arguments_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticBlur(**kwargs)


def test_bad_call_arguments_are_explained():
    blur = SyntheticBlur()
    x = _images(2)
    with pytest.raises(ValueError, match=r"sharp must be a float \(B, C, H, W\) tensor"):
        blur(x[0])
    with pytest.raises(ValueError, match=r"sharp must be a float \(B, C, H, W\) tensor"):
        blur((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\] \(divide 8-bit data by 255\)"):
        blur(x * 2)
    with pytest.raises(ValueError, match="either generator or seed"):
        blur(x, generator=_gen(0), seed=0)
    with pytest.raises(ValueError, match="params were drawn for 2 images of 48x56, got 2 of 40x56"):
        blur.apply(x[..., :40, :], blur.sample_params(2, 48, 56, _gen(0)))
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        blur.sample_params(0, 8, 8)
    with pytest.raises(ValueError, match="size must be a positive odd integer"):
        rasterize_psf(torch.zeros(3, 2), 8)
    with pytest.raises(ValueError, match="does not fit a 5x5 canvas; use size >= 9"):
        rasterize_psf(torch.tensor([[0.0, 0.0], [3.5, 0.0]]), 5)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 2"):
        shake_trajectory(n_steps=1)
    with pytest.raises(ValueError, match="gamma must be a positive number or 'srgb'"):
        to_linear(torch.zeros(1), -2.0)
    with pytest.raises(ValueError, match=r"psf holds 3 kernels for a batch of 2"):
        psf_blur(x, torch.ones(3, 5, 5) / 25)


def test_unquantised_blur_is_differentiable_with_finite_gradients():
    x = _images(2, 32, 32)
    x[..., :8, :8] = 0  # black corner: where the camera response and the noise's sqrt are steepest
    x.requires_grad_(True)
    blur = SyntheticBlur(p_nonuniform=0.5, read_noise=(0, 0), quantize=False)
    params = blur.sample_params(2, 32, 32, _gen(1))
    params.nonuniform[:] = torch.tensor([False, True])  # both kinds of blur
    blur.apply(x, params).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
