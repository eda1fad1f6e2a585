"""KernelField: the space-varying blur, the least-squares kernel, the prior, on real Levin pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelspace import load_model
from kernelspace.metrics import aligned, psnr
from kernelspace.models import KernelField
from kernelspace.physics.eff import blur_from_spectra, patch_spectra, space_varying_blur
from kernelspace.physics.psf import random_psf


def test_uniform_field_equals_conv2d(photo):
    x = torch.from_numpy(photo[:128, :192].copy()).permute(2, 0, 1)[None].float() / 255
    psf = random_psf(torch.Generator().manual_seed(0), size=15, max_extent=12.0, max_offset=0.0)
    field = psf.expand(1, 2, 3, 15, 15)
    direct = F.conv2d(F.pad(x, (7, 7, 7, 7), mode="reflect"), psf.expand(3, 1, 15, 15), groups=3)
    torch.testing.assert_close(space_varying_blur(x, field, 64), direct, atol=1e-5, rtol=0)


def test_whole_frame_and_patch_paths_agree():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 128, 128, generator=g)
    field = random_psf(g, size=9, max_extent=7.0, max_offset=0.0, batch=8).reshape(2, 2, 2, 9, 9)
    whole = space_varying_blur(x, field, 64)  # 4 cells: one frame
    patches = blur_from_spectra(patch_spectra(x, 64, 9), field)
    torch.testing.assert_close(whole, patches, atol=1e-5, rtol=0)



def test_blocks_and_bands_equal_the_one_block_blur(photo, monkeypatch):
    # A budget of a few cells forces bands of cell rows, pieces of one row and bands of psf_blur rows; every split
    # must give the blur computed in one block, since only the working memory is meant to change.
    import kernelspace.physics.blur as blur_module
    import kernelspace.physics.eff as eff

    x = torch.from_numpy(photo[:192, :320].copy()).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(2)
    field = random_psf(g, size=9, max_extent=7.0, max_offset=0.0, batch=15).reshape(1, 3, 5, 9, 9)
    whole = space_varying_blur(x, field, 64)
    spec = patch_spectra(x, 64, 9)
    per_cell = eff._PatchGeometry(192, 320, 64, 9).cell_bytes(3, 1, 4)
    for cells in (7, 2, 1):  # two cell rows at a time, parts of one row, one cell
        monkeypatch.setattr(eff, "TILE_BYTES", cells * per_cell)
        torch.testing.assert_close(space_varying_blur(x, field, 64), whole, atol=1e-5, rtol=0)
        torch.testing.assert_close(blur_from_spectra(spec, field), whole, atol=1e-5, rtol=0)
        torch.testing.assert_close(patch_spectra(x, 64, 9).spectra, spec.spectra)
    uniform = field[:, :1, :1].expand(1, 3, 5, 9, 9)
    one_band = space_varying_blur(x, uniform, 64)
    monkeypatch.setattr(blur_module, "BAND_BYTES", 1 << 16)  # bands of about 3 rows
    torch.testing.assert_close(space_varying_blur(x, uniform, 64), one_band, atol=1e-5, rtol=0)


def test_same_pair_transfer_on_levin(levin_pair):
    sharp, blurry = levin_pair
    model = KernelField(iterations=60)
    k = model.extract_kernel(sharp, blurry)
    assert float(model.response(k).flatten()[0]) == 1.0  # Levin's images are linear: the fit says so
    psf = model.psf_field(k)
    assert bool((psf >= 0).all()) and torch.allclose(psf.sum((-2, -1)), torch.ones(psf.shape[:3]), atol=1e-5)
    out = torch.from_numpy(model.apply_kernel(sharp, k).astype(np.float32) / 255)[None, None]
    ref = torch.from_numpy(blurry.astype(np.float32) / 255)[None, None]
    identity = psnr(*aligned(torch.from_numpy(sharp.astype(np.float32) / 255)[None, None], ref))
    reblurred = psnr(*aligned(out, ref))
    assert reblurred > 40.0 and reblurred > identity + 15


def test_fast_and_solved_extraction_on_levin(levin_pair):
    # Both ways of computing G on a real camera-shake pair: the fast one (the default) within a fraction of a dB
    # of the coupled solver (their speeds are benchmarks/bench_transfer.py's).
    sharp, blurry = levin_pair
    model = KernelField(iterations=60)
    assert model.extractor == "fast" and model.extraction_methods == ("fast", "solve", "learned")
    ref = torch.from_numpy(blurry.astype(np.float32) / 255)[None, None]
    scores = {}
    for method in ("fast", "solve"):
        k = model.extract_kernel(sharp, blurry, method=method)
        out = torch.from_numpy(model.apply_kernel(sharp, k).astype(np.float32) / 255)[None, None]
        scores[method] = psnr(*aligned(out, ref))
    assert scores["fast"] > 42.0 and scores["fast"] > scores["solve"] - 1.0, scores
    with pytest.raises(ValueError, match="method must be one of 'fast', 'solve', 'learned'"):
        model.extract_kernel(sharp, blurry, method="network")
    with pytest.raises(ValueError, match="extractor must be one of"):
        KernelField(extractor="network")


def test_fast_extraction_follows_a_blur_that_varies_across_a_photo(photo):
    # A real photo blurred by a different PSF in every cell. The pooled (uniform) fit cannot follow it; fitting
    # each cell on its window does much better, and the corrections on the coupled problem fix what fitting the
    # overlapping windows apart left.
    from kernelspace.metrics import psnr as score
    from kernelspace.physics.kernel_estimation import cell_normal_equations, fast_psf_field, pooled_psf

    x = (torch.from_numpy(photo[:192, :256].copy()).permute(2, 0, 1)[None].float() / 255).mean(1, keepdim=True)
    field = random_psf(torch.Generator().manual_seed(3), size=13, max_extent=10.0, max_offset=0.0, batch=12)
    y = space_varying_blur(x, field.reshape(1, 3, 4, 13, 13), 64)
    inner = (..., slice(6, -6), slice(6, -6))
    fit = lambda est: score(space_varying_blur(x, est, 64)[inner], y[inner])  # noqa: E731
    equations = cell_normal_equations(x, y, cell=64, psf_size=13)
    pooled = pooled_psf(*equations).expand_as(equations[1])
    cells = fast_psf_field(x, y, cell=64, psf_size=13, steps=0)
    finished = fast_psf_field(x, y, cell=64, psf_size=13)
    # Precomputed equations and pooled kernel (as a caller comparing camera responses passes them) change nothing.
    assert torch.equal(fast_psf_field(x, y, cell=64, psf_size=13, equations=equations, pooled=pooled[:, :1, :1]),
                       finished)
    assert fit(cells) > fit(pooled) + 4 and fit(finished) > fit(cells) + 5 and fit(finished) > 45, (
        fit(pooled), fit(cells), fit(finished))
    # Started from a field (a learned extractor's), only the corrections run: from the pooled kernel, three of
    # them get most of the way; from the true field, they stay there.
    truth = field.reshape(1, 3, 4, 13, 13)
    from_pooled = fast_psf_field(x, y, cell=64, psf_size=13, init=pooled)
    assert fit(from_pooled) > fit(cells) and fit(fast_psf_field(x, y, cell=64, psf_size=13, init=truth)) > 50, (
        fit(from_pooled), fit(fast_psf_field(x, y, cell=64, psf_size=13, init=truth)))


def test_a_batch_of_pairs_gives_each_pair_its_own_kernel(photo):
    # One call for several pairs (blur-swapping extracts in batches): each kernel as if its pair came alone.
    model = KernelField(cell=64, psf_size=13)
    x = torch.from_numpy(photo[:128, :192].copy()).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([x, x.flip(-1), x.flip(-2)])
    y = model.apply_kernel(x, model.sample_kernel(128, 192, batch=3, seed=4)).clamp(0, 1)
    batched = model.extract_kernel(x, y)
    alone = torch.cat([model.extract_kernel(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=2e-4, rtol=0)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_an_old_config_without_an_extractor_loads_with_the_fast_one(tmp_path):
    import json

    model = KernelField(cell=32, psf_size=9)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("extractor", "fast_iterations", "fast_steps"):
        config.pop(key)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path / "m")
    assert loaded.extractor == "fast"
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    k = loaded.extract_kernel(x, loaded.apply_kernel(x, loaded.sample_kernel(64, 64, seed=0)), method="solve")
    assert k.shape == (1, 82, 2, 2)


def test_the_learned_extractor_gives_valid_fields_per_pair_on_any_device(photo):
    # A real photo under a known blur: the network's field (untrained here: shapes and plumbing, not quality) is
    # a valid PSF field per pair, batches do not mix pairs, and its corrections fit the pair far better.
    from kernelspace.metrics import psnr as score

    model = KernelField(cell=32, psf_size=9, encoder_width=4)
    x = torch.from_numpy(photo[:64, :96].copy()).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([x, x.flip(-1)])
    y = model.apply_kernel(x, model.sample_kernel(64, 96, batch=2, seed=1)).clamp(0, 1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        model.to(device)
        fits = {}
        for steps in (0, 3):
            model.learned_steps = steps
            k = model.extract_kernel(x.to(device), y.to(device), method="learned")
            assert k.shape == (2, 82, 2, 3) and k.device.type == device
            psf = model.psf_field(k)
            assert (psf >= 0).all() and torch.allclose(psf.sum((-2, -1)), torch.ones(2, 2, 3, device=device))
            assert set(model.response(k).flatten().tolist()) <= set(model.gammas)
            alone = model.extract_kernel(x[1:].to(device), y[1:].to(device), method="learned")
            torch.testing.assert_close(k[1:], alone, atol=2e-4, rtol=0)
            fits[steps] = score(model.apply_kernel(x.to(device), k), y.to(device))
        assert fits[3] > fits[0] + 3, fits
    model.to("cpu")


def test_a_model_saved_without_a_learned_extractor_says_so(tmp_path):
    import json

    # As the default model was saved before the learned extractor existed: no encoder_width in its config.
    KernelField(cell=32, psf_size=9).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("encoder_width", "learned_steps"):
        config.pop(key)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    old = load_model(tmp_path / "m")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = old.apply_kernel(x, old.sample_kernel(64, 64, seed=0))
    with pytest.raises(ValueError, match="no learned extractor .* use method='fast'"):
        old.extract_kernel(x, y, method="learned")
    assert old.extract_kernel(x, y).shape == (1, 82, 2, 2)  # the default (fast) way still works
    with pytest.raises(ValueError, match="needs a learned extractor: give encoder_width"):
        KernelField(extractor="learned")
    with pytest.raises(ValueError, match="cell that is a power of two"):
        KernelField(cell=96, encoder_width=8)
    # With one, it is saved and loaded with its weights.
    model = KernelField(cell=32, psf_size=9, encoder_width=4, extractor="learned")
    model.save_pretrained(tmp_path / "learned")
    loaded = load_model(tmp_path / "learned")
    assert torch.equal(loaded.extract_kernel(x, y), model.extract_kernel(x, y))


def test_prior_is_seeded_valid_and_varies_across_the_image():
    model = KernelField(cell=64, psf_size=21, prior_max_extent=15.0, prior_max_rotation=3.0)
    k = model.sample_kernel(256, 320, batch=2, seed=5)
    assert tuple(k.shape) == (2, 21 * 21 + 1, 4, 5)
    assert torch.equal(k, model.sample_kernel(256, 320, batch=2, seed=5))
    assert not torch.equal(k, model.sample_kernel(256, 320, batch=2, seed=6))
    psf = model.psf_field(k)
    assert torch.allclose(psf.sum((-2, -1)), torch.ones(2, 4, 5), atol=1e-5)
    assert (psf[:, 0, 0] - psf[:, -1, -1]).abs().sum() > 0.1  # the rotation turns the blur across the frame


def test_gradients_and_save_load(tmp_path):
    model = KernelField(cell=32, psf_size=7)
    x = torch.rand(1, 3, 40, 50, requires_grad=True)
    k = model.sample_kernel(40, 50, seed=0).clone().requires_grad_()
    model.apply_kernel(x, k).mean().backward()
    assert x.grad.abs().sum() > 0 and k.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "kf")
    loaded = load_model(tmp_path / "kf", device="cpu")
    assert isinstance(loaded, KernelField) and loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.apply_kernel(x, k), model.apply_kernel(x, k))


def test_bad_configuration():
    with pytest.raises(ValueError, match="odd"):
        KernelField(psf_size=8)
    with pytest.raises(ValueError, match="cell"):
        KernelField(cell=7)
    with pytest.raises(ValueError, match="'latent' with latent_dim > 0"):
        KernelField(prior="latent")
    with pytest.raises(ValueError, match="no learned kernel space"):
        KernelField().encode_kernel(KernelField().sample_kernel(64, 64, seed=0))


def test_latent_prior_and_kernel_space_round_trip():
    model = KernelField(cell=32, psf_size=15, latent_dim=8, vae_width=4, prior="latent", latent_variation=0.5)
    k = model.sample_kernel(64, 96, batch=2, seed=1)
    assert tuple(k.shape) == (2, 15 * 15 + 1, 2, 3) and torch.equal(k, model.sample_kernel(64, 96, batch=2, seed=1))
    psf = model.psf_field(k)
    assert bool((psf >= 0).all()) and torch.allclose(psf.sum((-2, -1)), torch.ones(2, 2, 3), atol=1e-5)
    assert (psf[:, 0, 0] - psf[:, -1, -1]).abs().sum() > 0  # cells vary around their image's latent
    uniform = KernelField(cell=32, psf_size=15, latent_dim=8, vae_width=4, prior="latent", latent_variation=0.0)
    field = uniform.psf_field(uniform.sample_kernel(64, 96, seed=1))
    assert torch.allclose(field, field[:, :1, :1].expand_as(field))
    z = model.encode_kernel(k)
    assert tuple(z.shape) == (2, 8, 2, 3)
    assert model.decode_kernel(z, 2.2).shape == k.shape
    # A PSF of another size is centred on the model's canvas and still sums to one.
    small = torch.zeros(1, 5, 5)
    small[0, 1, 3] = 2.0
    canvas = model.fit_canvas(small)
    assert canvas.shape == (1, 15, 15) and canvas[0, 6, 8] == 1.0


def test_a_kernel_shared_by_the_batch_blurs_like_its_copies(photo):
    model = KernelField(cell=64, psf_size=21)
    x = torch.from_numpy(photo[:128, :192].astype(np.float32) / 255).permute(2, 0, 1)[None].repeat(3, 1, 1, 1)
    k = model.sample_kernel(128, 192, seed=3)
    torch.testing.assert_close(model.apply_kernel(x, k.expand(3, -1, -1, -1)), model.apply_kernel(x, k.repeat(3, 1, 1, 1)))
