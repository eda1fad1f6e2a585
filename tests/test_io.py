"""Image I/O: every accepted kind round-trips exactly; every bad input gets a clear error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from kernelspace.io import from_tensor, load_image, save_image, to_tensor


def _roundtrip(img):
    t, spec = to_tensor(img)
    assert t.dtype == torch.float32 and t.ndim == 4 and t.shape[1] == 3
    return from_tensor(t, spec)


@pytest.fixture
def rgba(photo) -> np.ndarray:
    crop = photo[:40, :56]
    alpha = np.arange(40 * 56, dtype=np.uint8).reshape(40, 56)  # every value distinct: any change shows
    return np.concatenate([crop, alpha[:, :, None]], axis=2)


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_numpy_uint8_roundtrip(rgba, channels):
    arr = {None: rgba[:, :, 0], 1: rgba[:, :, :1], 3: rgba[:, :, :3], 4: rgba}[channels]
    out = _roundtrip(arr)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_numpy_uint16_and_float_roundtrip(photo):
    u16 = photo[:33, :47].astype(np.uint16) * 257 + 3
    out = _roundtrip(u16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, u16)
    for dtype in (np.float32, np.float64):
        f = photo[:33, :47].astype(dtype) / 255
        out = _roundtrip(f)
        assert out.dtype == dtype and out.shape == f.shape
        np.testing.assert_allclose(out, f, atol=1e-7)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_pil_roundtrip(rgba, mode):
    if mode == "I;16":
        img = Image.fromarray(rgba[:, :, 0].astype(np.uint16) * 250)
    else:
        img = Image.fromarray(rgba if mode == "RGBA" else rgba[:, :, 0] if mode == "L" else rgba[:, :, :3])
    out = _roundtrip(img)
    assert isinstance(out, Image.Image) and out.mode == img.mode and out.size == img.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("shape", [(1, 21, 30), (3, 21, 30), (4, 21, 30), (2, 3, 21, 30), (2, 4, 21, 30)])
def test_tensor_roundtrip_keeps_layout_dtype_and_alpha(shape):
    t = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = _roundtrip(t)
    assert out.shape == t.shape and out.dtype == t.dtype
    torch.testing.assert_close(out, t, atol=1e-7, rtol=0)
    if shape[-3] == 4:
        assert torch.equal(out[..., 3, :, :], t[..., 3, :, :])


def test_tensor_keeps_autograd_history():
    t = torch.rand(3, 8, 8, requires_grad=True)
    x, spec = to_tensor(t)
    from_tensor(x * 2 - x, spec).sum().backward()
    torch.testing.assert_close(t.grad, torch.ones_like(t))


def test_path_roundtrip_gives_pil(tmp_path, photo):
    path = save_image(photo[:50, :60], tmp_path / "a.png")
    out = _roundtrip(str(path))
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), photo[:50, :60])


def test_save_image_is_atomic_and_leaves_no_temp(tmp_path, photo):
    path = tmp_path / "out" / "b.png"
    save_image(torch.from_numpy(photo[:20, :20].copy()).permute(2, 0, 1).float() / 255, path)
    assert [p.name for p in path.parent.iterdir()] == ["b.png"]
    np.testing.assert_array_equal(np.asarray(load_image(path)), photo[:20, :20])
    # The same permissions as a file made by open(): readable by others under the usual umask.
    mask = os.umask(0o022)
    try:
        save_image(photo[:4, :4], path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([0.1, np.nan, 0.2, 0.3]).reshape(2, 2), "NaN or Inf"),
        (np.full((4, 4), np.inf, dtype=np.float32), "NaN or Inf"),
        (torch.tensor([[[0.5, float("nan")]]]), "NaN or Inf"),
        (np.zeros((0, 5), np.uint8), "empty"),
        (torch.zeros(3, 0, 4), "empty"),
        (np.zeros(5, np.uint8), "1-D"),
        (torch.zeros(7), "1-D"),
        (np.full((4, 4), 1.5, np.float32), "outside|in \\[0, 1\\]"),
        (-torch.ones(3, 4, 4), "in \\[0, 1\\]"),
        (np.zeros((4, 4, 2), np.uint8), "2 channels"),
        (torch.zeros(5, 4, 4), "5 channels"),
        (np.zeros((4, 4), np.int32), "dtype int32"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        to_tensor(bad, name="sharp")
    assert "sharp" in str(info.value) and "Accepted" in str(info.value)


def test_bad_types_and_files(tmp_path):
    with pytest.raises(TypeError, match="unsupported type list"):
        to_tensor([[0.0]])
    with pytest.raises(FileNotFoundError, match="not found"):
        to_tensor(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read"):
        to_tensor(junk)


def _modes(photo: np.ndarray, tmp_path) -> dict[str, Image.Image]:
    crop = photo[:40, :56]
    palette = Image.fromarray(crop).quantize(32)
    palette.info["transparency"] = 5  # palette entry 5 is transparent: a tRNS chunk once saved
    palette.save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as saved:  # a real file, as an editor writes it
        saved.load()
    grey = crop[:, :, 1]
    return {
        "P": Image.fromarray(crop).quantize(32),
        "P+transparency": saved,
        "PA": Image.fromarray(crop).quantize(32).convert("PA"),
        "LA": Image.fromarray(np.dstack([grey, crop[:, :, 0]])),
        "I": Image.fromarray(grey.astype(np.int32) * 257),
        "F": Image.fromarray(grey.astype(np.float32) / 255),
        "CMYK": Image.fromarray(crop).convert("CMYK"),
        "1": Image.fromarray(grey).convert("1"),
    }


@pytest.mark.parametrize("mode", ["P", "P+transparency", "PA", "LA", "I", "F", "CMYK", "1"])
def test_every_pil_mode_is_read_correctly(photo, tmp_path, mode):
    img = _modes(photo, tmp_path)[mode]
    t, spec = to_tensor(img)
    out = from_tensor(t, spec)
    # The colour the image shows, and the transparency it carries, come back exactly.
    if mode in ("I", "F"):
        expected = np.asarray(img).astype(np.float64) / (65535 if mode == "I" else 1)
        np.testing.assert_allclose(t[0, 0].double().numpy(), expected, atol=1e-6)
        assert out.mode == mode
        np.testing.assert_allclose(np.asarray(out), np.asarray(img), atol=1e-6)
        return
    shown = img.convert("RGBA" if spec.channels == 4 else "L" if mode == "1" else "RGB")
    assert out.mode == shown.mode
    np.testing.assert_array_equal(np.asarray(out), np.asarray(shown))
    assert spec.channels == (4 if mode in ("P+transparency", "PA", "LA") else 1 if mode == "1" else 3)
    if mode == "P+transparency":  # the file's transparent pixels are there
        assert set(np.unique(np.asarray(out)[:, :, 3])) == {0, 255}


def test_pil_modes_that_cannot_be_read_are_refused(photo):
    with pytest.raises(ValueError, match="mode I image with values from -1 .*0 to 65535"):
        to_tensor(Image.fromarray(np.full((4, 4), -1, np.int32)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        to_tensor(Image.fromarray(np.full((4, 4), 3.0, np.float32)))
