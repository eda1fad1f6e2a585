"""BlurSynthesizer: every input kind, transfer across sizes, seeded sampling, independence within a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kernelspace import BlurSynthesizer, load_model
from kernelspace.models import KernelField
from kernelspace.synthesis import BlurSynthesizer as DirectImport

from .conftest import DATA, need


@pytest.fixture(scope="module")
def synth() -> BlurSynthesizer:
    # A small field keeps kernel extraction around a second; the public interface is the same as the default's.
    return BlurSynthesizer(KernelField(cell=64, psf_size=17, iterations=30), device="cpu")


@pytest.fixture(scope="module")
def gopro_crops() -> tuple[np.ndarray, np.ndarray]:
    """A real non-uniformly blurred GoPro pair, a 96x128 crop (uint8 RGB)."""
    root = need(DATA / "eval" / "gopro_pairs6")
    sharp = np.asarray(Image.open(root / "sharp" / "00.png").convert("RGB"))[300:396, 600:728]
    blurry = np.asarray(Image.open(root / "blur" / "00.png").convert("RGB"))[300:396, 600:728]
    return np.ascontiguousarray(sharp), np.ascontiguousarray(blurry)


def test_exported_from_the_package() -> None:
    assert BlurSynthesizer is DirectImport


def test_sample_returns_every_input_kind_as_given(synth: BlurSynthesizer, photo: np.ndarray) -> None:
    rgb = photo[:80, :100].copy()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    chw = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255
    cases = [Image.fromarray(rgb), Image.fromarray(grey), rgb, grey, rgb.astype(np.float32) / 255, chw, chw[None]]
    for image in cases:
        out = synth.sample(image, seed=3)
        assert type(out) is type(image)
        if isinstance(image, Image.Image):
            assert (out.mode, out.size) == (image.mode, image.size)
        else:
            assert (out.shape, out.dtype) == (image.shape, image.dtype)
    # Blurring smooths: a real photo loses gradient energy.
    out = synth.sample(rgb, seed=3).astype(np.float32)
    assert np.abs(np.diff(out, axis=1)).mean() < 0.8 * np.abs(np.diff(rgb.astype(np.float32), axis=1)).mean()


def test_sample_is_seeded_and_each_image_gets_its_own_blur(synth: BlurSynthesizer, photo: np.ndarray) -> None:
    x = torch.tensor(photo[:64, :64]).permute(2, 0, 1).float() / 255
    batch = x.expand(3, -1, -1, -1).contiguous()
    a, b, c = synth.sample(batch, seed=1), synth.sample(batch, seed=1), synth.sample(batch, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1], atol=1e-3) and not torch.allclose(a[1], a[2], atol=1e-3)
    torch.manual_seed(0)
    d = synth.sample(batch)
    torch.manual_seed(0)
    assert torch.equal(d, synth.sample(batch))  # seed=None follows torch.manual_seed


def test_sample_n_gives_n_different_blurs(synth: BlurSynthesizer, photo: np.ndarray) -> None:
    draws = synth.sample(photo[:64, :80], n=3, seed=0)
    assert isinstance(draws, list) and len(draws) == 3
    assert all(d.shape == (64, 80, 3) for d in draws)
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])
    assert np.array_equal(draws[0], synth.sample(photo[:64, :80], seed=0))  # the first draw of the same seed


def test_lists_of_images_of_different_sizes(synth: BlurSynthesizer, photo: np.ndarray) -> None:
    images = [photo[:64, :64], Image.fromarray(photo[:50, :90]), torch.rand(3, 40, 30)]
    out = synth.sample(images, seed=0)
    assert isinstance(out, list) and len(out) == 3
    assert out[0].shape == (64, 64, 3) and out[1].size == (90, 50) and out[2].shape == (3, 40, 30)
    kernel = synth.model.sample_kernel(64, 64, seed=0)
    blurred = synth.apply_kernel(images, kernel)
    assert np.array_equal(blurred[0], synth.apply_kernel(images[0], kernel))
    with pytest.raises(ValueError, match="empty list"):
        synth.sample([])


def test_transfer_moves_a_real_blur_to_another_size(
    synth: BlurSynthesizer, gopro_crops: tuple[np.ndarray, np.ndarray], photo: np.ndarray
) -> None:
    sharp, blurry = gopro_crops
    k = synth.extract_kernel(sharp, blurry)
    # Same pair: the transferred blur reproduces the real blurry image far better than the sharp image does.
    again = synth.transfer(sharp, blurry, sharp).astype(np.float64)
    error = np.abs(again - blurry).mean()
    assert error < 0.6 * np.abs(sharp.astype(np.float64) - blurry).mean()
    # Another image of another size: same kind and size out, and exactly apply_kernel(target, k).
    target = photo[:150, :200]
    moved = synth.transfer(sharp, blurry, target)
    assert moved.shape == target.shape and np.array_equal(moved, synth.apply_kernel(target, k))
    # Lists: one source pair per target.
    pair_list = synth.transfer([sharp, sharp], [blurry, blurry], [target, Image.fromarray(target)])
    assert np.array_equal(pair_list[0], moved) and np.array_equal(np.asarray(pair_list[1]), moved)


def test_default_model_and_from_pretrained(tmp_path, photo: np.ndarray) -> None:
    default = BlurSynthesizer(device="cpu")
    assert type(default.model) is type(load_model(device="cpu"))
    assert default.sample(photo[:64, :64], seed=0).shape == (64, 64, 3)
    KernelField(cell=32, psf_size=9).save_pretrained(tmp_path / "small")
    loaded = BlurSynthesizer.from_pretrained(tmp_path / "small", device="cpu")
    assert loaded.model.cell == 32 and "KernelField" in repr(loaded)


def test_bad_input_says_what_is_accepted(synth: BlurSynthesizer, photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        synth.sample(photo, n=0)
    with pytest.raises(ValueError, match="seed"):
        synth.sample(photo, seed=1.5)
    with pytest.raises(TypeError, match="both as lists"):
        synth.extract_kernel([photo], photo)
    with pytest.raises(ValueError, match="kernel has 1 items but 2"):
        synth.apply_kernel([photo, photo], [synth.model.sample_kernel(8, 8, seed=0)])
    with pytest.raises(TypeError, match="KernelSpaceModel"):
        BlurSynthesizer(model=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_result_on_the_input_device(photo: np.ndarray) -> None:
    cpu = BlurSynthesizer(KernelField(cell=64, psf_size=17), device="cpu")
    gpu = BlurSynthesizer(KernelField(cell=64, psf_size=17), device="cuda")
    x = torch.tensor(photo[:64, :64]).permute(2, 0, 1).float()[None] / 255
    out = gpu.sample(x.cuda(), seed=0)
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu.sample(x, seed=0), atol=1e-4)
