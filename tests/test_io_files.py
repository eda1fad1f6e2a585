"""Image files in and out: phone photos upright with their metadata, 16-bit colour, size limits, safe writes.

Every file is made here, from crops of the real photos in ../shared/data/train, or written byte by byte where
the point is a file that Pillow itself cannot write (16-bit colour, a huge image in a small file).
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from kernelspace.io import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageTooLargeError,
    from_tensor,
    image_metadata,
    load_image,
    save_image,
    to_tensor,
)

ORIENTATION, MAKE = 0x0112, 0x010F


def _png(path: Path, pixels: np.ndarray, *, depth: int = 16, interlace: bool = False, chunks: bytes = b"") -> Path:
    """A PNG written byte by byte (no filtering), independently of the code under test; ``pixels`` H x W x C."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def scanlines(sub: np.ndarray) -> bytes:
        raw = sub.astype(">u2" if depth == 16 else np.uint8).tobytes()
        row = len(raw) // len(sub)
        return b"".join(b"\0" + raw[i * row:(i + 1) * row] for i in range(len(sub)))

    if interlace:  # Adam7: seven sub-images (x start, y start, x step, y step)
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        subs = [pixels[y0::dy, x0::dx] for x0, y0, dx, dy in passes]
        data = b"".join(scanlines(s) for s in subs if s.size)
    else:
        data = scanlines(pixels)
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + chunks + _chunk(b"IDAT", zlib.compress(data))
                     + _chunk(b"IEND", b""))
    return path

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture
def photo16(photo) -> np.ndarray:
    """A real crop at 16 bits with distinct low bytes (an 8-bit reader would lose them)."""
    crop = photo[:48, :64].astype(np.uint16)
    return crop * 256 + (crop * 7 + 13) % 256


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- Phone photos: EXIF orientation, metadata, JPEG quality -----------------------------------------------------

@pytest.fixture
def portrait_jpeg(tmp_path, photo) -> tuple[Path, np.ndarray]:
    """A portrait photo stored as a camera does: the sensor's landscape pixels plus "rotate 90 CW" (orientation 6)."""
    upright = photo[:300, :200]  # portrait
    stored = np.rot90(upright, 1)  # what the sensor recorded; turning it 90 degrees clockwise shows it upright
    exif = Image.Exif()
    exif[ORIENTATION], exif[MAKE] = 6, "kernelspace-test"
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif, icc_profile=_srgb_profile())
    return path, upright


def test_exif_orientation_is_applied_on_load(portrait_jpeg):
    path, upright = portrait_jpeg
    img = load_image(path)
    assert img.size == (200, 300)  # portrait, as the phone showed it
    stored = np.asarray(Image.open(path))
    np.testing.assert_array_equal(np.asarray(img), np.rot90(stored, -1))
    assert np.abs(np.asarray(img).astype(int) - upright).mean() < 3  # the same picture, up to JPEG loss
    assert img.getexif().get(ORIENTATION, 1) == 1 and img.getexif()[MAKE] == "kernelspace-test"
    t, _ = to_tensor(path)
    assert tuple(t.shape) == (1, 3, 300, 200)


def test_saved_photo_is_upright_and_keeps_exif_and_icc(tmp_path, portrait_jpeg):
    path, _ = portrait_jpeg
    # The library's flow: a path or image in, the same kind out (as deblur and apply_kernel do), then saved.
    t, spec = to_tensor(load_image(path))
    out = save_image(from_tensor(t, spec), tmp_path / "out" / "phone.jpg")
    with Image.open(out) as saved:
        assert saved.size == (200, 300)
        assert saved.getexif().get(ORIENTATION, 1) == 1  # the pixels are upright: no viewer may turn them again
        assert saved.getexif()[MAKE] == "kernelspace-test"
        assert saved.info["icc_profile"] == _srgb_profile()
    # A uint16 or array result carries no metadata: image_metadata reads it from the input for save_image.
    meta = image_metadata(path)
    for suffix in (".png", ".webp", ".tif", ".jpg"):
        dst = save_image(np.asarray(load_image(path)), tmp_path / f"array{suffix}", exif=meta.exif,
                         icc_profile=meta.icc_profile)
        with Image.open(dst) as saved:
            exif = saved.getexif()
            assert exif.get(ORIENTATION, 1) == 1 and exif[MAKE] == "kernelspace-test", suffix
            assert saved.info.get("icc_profile") == _srgb_profile(), suffix
    # b"" writes none; formats without metadata (BMP) simply hold none.
    dst = save_image(load_image(path), tmp_path / "bare.jpg", exif=b"", icc_profile=b"")
    with Image.open(dst) as saved:
        assert not saved.getexif() and "icc_profile" not in saved.info


def test_image_metadata_reads_the_stored_exif(portrait_jpeg):
    meta = image_metadata(portrait_jpeg[0])
    exif = Image.Exif()
    exif.load(meta.exif)
    assert exif[ORIENTATION] == 6 and exif[MAKE] == "kernelspace-test"  # as stored; save_image resets it
    assert meta.icc_profile == _srgb_profile()


def test_jpeg_quality_defaults_to_95(tmp_path, photo):
    crop = photo[:64, :64]
    tables = {}
    for name, options in (("default", {}), ("q95", {"quality": 95}), ("q75", {"quality": 75})):
        with Image.open(save_image(crop, tmp_path / f"{name}.jpg", **options)) as saved:
            tables[name] = saved.quantization
    assert tables["default"] == tables["q95"] != tables["q75"]
    for bad in (0, 101, 9.5, True):
        with pytest.raises(ValueError, match="quality must be a whole number from 1 to 100"):
            save_image(crop, tmp_path / "bad.jpg", quality=bad)


# --- 16-bit colour ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_colour_png_is_read_at_16_bits(tmp_path, photo16, channels, interlace):
    pixels = photo16 if channels == 3 else np.dstack([photo16, photo16[:, :, 1][::-1]])
    path = _png(tmp_path / "deep.png", pixels, interlace=interlace)
    img = load_image(path)
    assert isinstance(img, np.ndarray) and img.dtype == np.uint16
    np.testing.assert_array_equal(img, pixels)


def test_16bit_grey_with_alpha_png_is_read_as_rgba(tmp_path, photo16):
    pixels = np.dstack([photo16[:, :, 0], photo16[:, :, 2]])
    img = load_image(_png(tmp_path / "la.png", pixels))
    np.testing.assert_array_equal(img, np.dstack([pixels[:, :, 0]] * 3 + [pixels[:, :, 1]]))


def test_16bit_colour_png_is_turned_upright(tmp_path, photo16):
    exif = Image.Exif()
    exif[ORIENTATION] = 8  # display = stored turned 90 degrees counter-clockwise
    img = load_image(_png(tmp_path / "turned.png", photo16, chunks=_chunk(b"eXIf", exif.tobytes()[6:])))
    np.testing.assert_array_equal(img, np.rot90(photo16, 1))


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_is_written_as_16bit_png(tmp_path, photo16, channels):
    pixels = photo16 if channels == 3 else np.dstack([photo16, photo16[:, :, 0]])
    path = save_image(pixels, tmp_path / "deep.png", exif=Image.Exif(), icc_profile=_srgb_profile())
    with Image.open(path) as check:  # Pillow's own reader: the high bytes, the profile
        assert check.mode == ("RGB" if channels == 3 else "RGBA") and check.info["icc_profile"] == _srgb_profile()
        np.testing.assert_array_equal(np.asarray(check), (pixels >> 8).astype(np.uint8))
    np.testing.assert_array_equal(load_image(path), pixels)  # and every bit back
    ppm = save_image(photo16, tmp_path / "deep.ppm")
    np.testing.assert_array_equal(load_image(ppm), photo16)
    turned = photo16.transpose(1, 0, 2)[::-1]  # a strided view, as results of numpy operations often are
    np.testing.assert_array_equal(load_image(save_image(turned, tmp_path / "turned.png")), turned)


def test_16bit_ppm_is_read_at_16_bits(tmp_path, photo16):
    twelve_bit = photo16 >> 4  # a raw converter's 12-bit output: maxval 4095, scaled to the full 16-bit range
    path = tmp_path / "raw.ppm"
    path.write_bytes(b"P6\n64 48\n4095\n" + twelve_bit.astype(">u2").tobytes())
    np.testing.assert_array_equal(load_image(path), np.round(twelve_bit * (65535 / 4095)).astype(np.uint16))
    plain = tmp_path / "plain.ppm"
    plain.write_bytes(b"P3\n2 1\n4095\n0 0 0 4095 4095 4095\n")
    with pytest.raises(ValueError, match="16-bit colour PPM files are not supported"):
        load_image(plain)


def _tiff16(path: Path, pixels: np.ndarray) -> Path:
    """An uncompressed 16-bit RGB TIFF, written byte by byte (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 134), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 140), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = b"".join(struct.pack("<HHII" if kind == 4 or count > 1 else "<HHIHxx", tag, kind, count, value)
                   for tag, kind, count, value in tags)
    # header (8 bytes), 10 entries (2 + 120 + 4 bytes), bits per sample at 134, pixels at 140
    path.write_bytes(b"II*\0" + struct.pack("<IH", 8, len(tags)) + ifd + bytes(4) + struct.pack("<3H", 16, 16, 16)
                     + data)
    return path


def test_16bit_colour_tiff_is_refused_not_cut_to_8_bits(tmp_path, photo16):
    path = _tiff16(tmp_path / "deep.tif", photo16)
    with Image.open(path) as check:  # a valid file: Pillow reads it, at 8 bits
        np.testing.assert_array_equal(np.asarray(check), (photo16 >> 8).astype(np.uint8))
    with pytest.raises(ValueError, match="16-bit colour TIFF files are not supported.*convert the file to a 16-bit"):
        load_image(path)


def test_16bit_round_trip_through_tensors(tmp_path, photo16):
    path = save_image(photo16, tmp_path / "deep.png")
    t, spec = to_tensor(path)
    out = from_tensor(t, spec)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, photo16)
    grey = save_image(photo16[:, :, 0], tmp_path / "grey.png")
    t, spec = to_tensor(grey)
    np.testing.assert_array_equal(np.asarray(from_tensor(t, spec)), photo16[:, :, 0])


def test_16bit_colour_to_8bit_formats_is_refused(tmp_path, photo16):
    for suffix in (".jpg", ".bmp", ".webp", ".tif"):
        with pytest.raises(ValueError, match="cannot hold 16-bit colour; use .png"):
            save_image(photo16, tmp_path / f"x{suffix}")
    assert not list(tmp_path.iterdir())


# --- Bad images on save --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.full((4, 4, 3), np.nan, np.float32), torch.tensor([[[0.5, float("inf")]]])])
def test_save_refuses_nan_and_inf(tmp_path, bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_image(bad, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["x.xyz", "x", "x.png.part"])
def test_save_refuses_unknown_suffixes(tmp_path, photo, name):
    with pytest.raises(ValueError, match=r"unknown image suffix .*accepted: \.png, \.jpg"):
        save_image(photo[:4, :4], tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_save_writes_float_pil_images_and_half_tensors_as_8_bit(tmp_path, photo):
    grey = photo[:8, :8, 0]
    float_image = Image.fromarray(grey.astype(np.float32) / 255)  # what from_tensor gives for a mode F input
    np.testing.assert_array_equal(np.asarray(load_image(save_image(float_image, tmp_path / "f.png"))), grey)
    half = torch.from_numpy(photo[:8, :8] / 255).permute(2, 0, 1).to(torch.bfloat16)
    saved = np.asarray(load_image(save_image(half, tmp_path / "h.png"))).astype(int)
    assert np.abs(saved - photo[:8, :8]).max() <= 1  # bfloat16 holds 8 significant bits


def test_save_refuses_what_the_format_cannot_hold(tmp_path, photo):
    rgba = np.dstack([photo[:8, :8], photo[:8, :8, 0]])
    with pytest.raises(ValueError, match="JPEG holds grey or RGB"):
        save_image(rgba, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="dtype int32"):
        save_image(photo[:8, :8].astype(np.int32), tmp_path / "x.png")


# --- Size limit ----------------------------------------------------------------------------------------------

def test_huge_image_in_a_small_file_is_refused_before_decoding(tmp_path):
    side = 12000
    path = tmp_path / "bomb.png"
    compressor, parts = zlib.compressobj(9), []
    row = bytes(side + 1)  # filter byte + a row of black 8-bit grey
    parts += [compressor.compress(row) for _ in range(side)]
    data = b"".join(parts) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    assert path.stat().st_size < 200_000  # 144 M pixels in about 140 KB
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path)
    message = str(info.value)
    for part in (str(path), "144,000,000 pixels", f"{DEFAULT_MAX_PIXELS:,}", "max_pixels=144000000", MAX_PIXELS_ENV):
        assert part in message, part
    assert isinstance(info.value, ValueError) and info.value.pixels == side * side
    with pytest.raises(ImageTooLargeError):
        to_tensor(path)
    # Checked from the header alone: a file holding only the header is refused the same way, not as truncated.
    header_only = tmp_path / "header.png"
    header_only.write_bytes(path.read_bytes()[:33] + _chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError):
        load_image(header_only)



def test_pixel_limit_can_be_raised(tmp_path, photo, monkeypatch):
    path = save_image(photo[:100, :100], tmp_path / "a.png")
    with pytest.raises(ImageTooLargeError, match="10,000 pixels is over the limit of 9,999"):
        load_image(path, max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    monkeypatch.setenv(MAX_PIXELS_ENV, "9999")
    with pytest.raises(ImageTooLargeError):
        to_tensor(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "10_000")
    assert to_tensor(path)[0].shape[-1] == 100
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="KERNELSPACE_MAX_PIXELS='lots'"):
        load_image(path)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="max_pixels must be a positive whole number"):
            load_image(path, max_pixels=bad)


def test_only_image_formats_are_decoded(tmp_path):
    eps = tmp_path / "drawing.png"  # an EPS file under an image name: Pillow would hand it to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ValueError, match="cannot read .*not a PNG, JPEG"):
        load_image(eps)


# --- Safe writes ---------------------------------------------------------------------------------------------

def test_save_leaves_the_umask_of_other_threads_alone(tmp_path, photo):
    """save_image used to set the process-wide umask to 0 and back: a file that another thread created in
    between got mode 0666 (26 of 200,000 in a stress run). To hit every such moment deterministically, a
    profile hook creates a file after every C call that save_image makes, as another thread could."""
    probe, modes = tmp_path / "other-thread", []

    def create_a_file(frame, event, arg) -> None:
        if event == "c_return":
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)
            modes.append(os.fstat(fd).st_mode & 0o777)
            os.close(fd)
            os.unlink(probe)

    mask = os.umask(0o022)
    sys.setprofile(create_a_file)
    try:
        save_image(photo[:4, :4], tmp_path / "out.png")
    finally:
        sys.setprofile(None)
        os.umask(mask)
    assert len(modes) > 50 and set(modes) == {0o644}, {oct(m): modes.count(m) for m in set(modes)}
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


def test_save_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, photo, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    path = save_image(photo[:8, :8], tmp_path / "a.png")
    assert events == [("fsync", path.stat().st_ino), ("replace", None), ("fsync", tmp_path.stat().st_ino)]


def test_photo_folders_read_files_upright_at_full_depth(tmp_path, photo16, portrait_jpeg):
    from kernelspace.data import PhotoFolder

    folder = tmp_path / "photos"
    save_image(photo16, folder / "deep.png")
    palette = Image.fromarray((photo16 >> 8).astype(np.uint8)).quantize(16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png")
    (folder / "phone.jpg").write_bytes(portrait_jpeg[0].read_bytes())
    images = PhotoFolder(folder, crop=None, flips=False, rot90=False)
    by_name = {f.name: images[i] for i, f in enumerate(images.files)}
    torch.testing.assert_close(by_name["deep.png"], torch.from_numpy(photo16 / 65535).permute(2, 0, 1).float())
    assert tuple(by_name["palette.png"].shape) == (3, 48, 64)
    assert tuple(by_name["phone.jpg"].shape) == (3, 300, 200)
