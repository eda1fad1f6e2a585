"""Image input and output shared by every public function.

Accepted images: a path, a PIL image, a numpy array (HxW or HxWxC; uint8, uint16 or float in [0, 1]; 1, 3 or
4 channels) or a torch tensor (CxHxW or BxCxHxW, float in [0, 1]). :func:`to_tensor` turns any of them into
a float32 ``(B, 3, H, W)`` tensor plus an :class:`ImageSpec` that remembers how the image came in;
:func:`from_tensor` gives a result back in that same kind, dtype, layout and channel count. Grey images are
processed as three equal channels and returned as one; an alpha channel is set aside and returned untouched.
A path comes back as what :func:`load_image` reads: a PIL image, or a uint16 array for 16-bit colour files.

Files: :func:`load_image` turns photos upright (EXIF orientation), reads 16-bit colour PNG and PPM files at
16 bits, and refuses images over a pixel limit before decoding them; :func:`save_image` writes atomically
(fsynced), keeps EXIF and ICC profiles where the format holds them, and writes uint16 colour as 16-bit PNG.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "ImageLike",
    "ImageMetadata",
    "ImageSpec",
    "ImageTooLargeError",
    "from_tensor",
    "image_metadata",
    "load_image",
    "save_image",
    "to_tensor",
]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""The file suffixes read by folder jobs and written by :func:`save_image` (any case)."""

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                 ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM"}
# What load_image decodes, whatever the file's name: the formats of IMAGE_SUFFIXES and no others, so that a file
# named .png holding, say, EPS never reaches a decoder that runs an external program.
_READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM")
_METADATA_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}  # the formats that hold EXIF and an ICC profile

DEFAULT_MAX_PIXELS = 120_000_000
"""Images with more pixels are refused by :func:`load_image` unless the limit is raised: 108-megapixel phone
photos (12000 x 9000) pass, a 12000 x 12000 image (144 M pixels, 1.7 GB as a float tensor) does not."""

MAX_PIXELS_ENV = "KERNELSPACE_MAX_PIXELS"
"""The environment variable that sets the pixel limit of :func:`load_image` when ``max_pixels`` is not given."""

DEFAULT_JPEG_QUALITY = 95
"""The JPEG (and WebP) quality :func:`save_image` writes at: visually lossless for photos."""

_ACCEPTED = (
    "a path, a PIL image, a numpy array (HxW or HxWxC; uint8, uint16 or float in [0, 1]; 1, 3 or 4 channels) "
    "or a torch tensor (CxHxW or BxCxHxW, float in [0, 1])"
)
_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_ORIENTATION = 0x0112  # the EXIF tag: 1 is upright


class ImageTooLargeError(ValueError):
    """An image file with more pixels than the limit of :func:`load_image` (found before decoding it)."""

    def __init__(self, path: Path, size: tuple[int, int], limit: int) -> None:
        self.path, self.size, self.limit = path, size, limit
        self.pixels = size[0] * size[1]
        super().__init__(
            f"{path}: {size[0]}x{size[1]} = {self.pixels:,} pixels is over the limit of {limit:,} pixels "
            f"({self.pixels * 12 / 1e9:.1f} GB as a float32 RGB tensor; a small file can hold a huge image). "
            f"To read it, pass max_pixels={self.pixels} to load_image or set the environment variable "
            f"{MAX_PIXELS_ENV}={self.pixels}"
        )


@dataclass(frozen=True)
class ImageMetadata:
    """The metadata :func:`save_image` can carry from an input file to an output: raw EXIF and ICC bytes."""

    exif: bytes | None = None
    icc_profile: bytes | None = None


@dataclass(frozen=True)
class ImageSpec:
    """How an image came in, so that a result can be given back the same way."""

    kind: str  # "pil", "numpy" or "tensor"
    layout: str  # "HW", "HWC", "CHW" or "BCHW"
    channels: int  # 1, 3 or 4 as given
    dtype: Any  # numpy dtype, torch dtype, or the PIL mode a result comes back in
    device: torch.device | None = None
    alpha: Any = None  # the alpha channel exactly as given (numpy array, tensor or PIL band)
    metadata: ImageMetadata | None = None  # a PIL image's EXIF and ICC profile, given to the result


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what}. Accepted: {_ACCEPTED}.")


def _pixel_limit(max_pixels: int | None) -> int:
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV)
        if text is None:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive whole number of pixels") from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
    return max_pixels


def _open_header(fp: IO[bytes], path: Path) -> Image.Image:
    """Parse the header of one of :data:`_READ_FORMATS` (no pixels decoded yet).

    ``Image.open`` would also apply Pillow's size check, whose limit is a process-wide setting that warns before
    it refuses; :func:`load_image` checks the size itself, against a limit the caller can raise.
    """
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in _READ_FORMATS:
        if fmt not in Image.OPEN:
            Image.init()
        if fmt not in Image.OPEN:  # a Pillow built without this codec (WebP)
            continue
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept else True
        if verdict and not isinstance(verdict, str):  # a string is Pillow's reason for not taking the file
            fp.seek(0)
            return factory(fp, str(path))
    raise ValueError(f"not a {', '.join(_READ_FORMATS)} file")


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image | np.ndarray:
    """Read an image file, upright, with a clear error if it is missing, unreadable or too large.

    The EXIF orientation is applied (a portrait phone photo comes back portrait) and removed from the image's
    EXIF. 16-bit colour PNG and PPM files, which PIL can only hold at 8 bits, come back as uint16 ``H x W x 3``
    (or ``x 4`` with alpha; grey with alpha as four channels) numpy arrays; everything else as a PIL image
    (16-bit grey as mode ``I;16``). PIL images carry the file's EXIF and ICC profile in ``.info``;
    :func:`image_metadata` reads them for any file.

    Args:
        path: the image file (PNG, JPEG, BMP, TIFF, WebP or PPM/PGM; recognised by content, not by name).
        max_pixels: refuse images with more pixels than this (:class:`ImageTooLargeError`, raised before any
            pixel is decoded). Default: the environment variable ``KERNELSPACE_MAX_PIXELS``, else
            :data:`DEFAULT_MAX_PIXELS` (120 million).

    Example:
        >>> import tempfile, numpy as np, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
        >>> load_image(path).size
        (5, 4)
        >>> try:
        ...     load_image(path, max_pixels=19)
        ... except ImageTooLargeError as err:
        ...     print(err.pixels, err.limit)
        20 19
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    limit = _pixel_limit(max_pixels)
    try:
        with path.open("rb") as fp:
            img = _open_header(fp, path)
            if img.width * img.height > limit:
                raise ImageTooLargeError(path, img.size, limit)
            wide = _sixteen_bit_colour(img)
            if wide is not None:
                return _read_sixteen_bit_colour(fp, path, img, wide)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return img
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"cannot read {path} as an image ({err}); accepted formats: {', '.join(IMAGE_SUFFIXES)}"
        ) from None


def _tile_rawmode(img: Image.Image) -> Any:
    args = img.tile[0][3] if len(img.tile) == 1 else None
    return args[0] if isinstance(args, tuple) else args


def _sixteen_bit_colour(img: Image.Image) -> str | None:
    """How to read ``img`` at 16 bits when PIL would give it 8 ("png", "ppm"), else None.

    Raises for 16-bit colour in other formats rather than dropping 8 bits silently.
    """
    rawmode = _tile_rawmode(img)
    if img.format == "PNG" and rawmode in ("RGB;16B", "RGBA;16B", "LA;16B"):
        return "png"
    maxval = img.tile[0][3][1] if img.format == "PPM" and isinstance(img.tile[0][3], tuple) else 0
    if img.mode == "RGB" and maxval > 255 and img.tile[0][0] == "ppm":  # binary P6 (not plain-text P3)
        return "ppm"
    if img.mode in ("RGB", "RGBA") and (maxval > 255 or isinstance(rawmode, str) and ";16" in rawmode):
        raise ValueError(f"16-bit colour {img.format} files are not supported (PIL reads them at 8 bits); "
                         "convert the file to a 16-bit PNG")
    return None


def _read_sixteen_bit_colour(fp: IO[bytes], path: Path, img: Image.Image, kind: str) -> np.ndarray:
    """The uint16 pixels, upright (as ``ImageOps.exif_transpose`` turns them).

    PNG: Pillow's own decoder (inflate, unfiltering, interlacing) is run with unpackers that keep the bytes it
    would drop: the high bytes as usual, the low ones by reading the big-endian samples as little-endian; grey +
    alpha rows (4 bytes a pixel) come out whole as RGBA.
    """
    if kind == "ppm":
        # Raw P6 data: big-endian samples right after the header, scaled to the file's maximum value.
        maxval = img.tile[0][3][1]
        fp.seek(img.tile[0][2])
        count = img.width * img.height * 3
        data = fp.read(2 * count)
        if len(data) < 2 * count:
            raise ValueError(f"the file is truncated: {len(data)} bytes of pixels, {2 * count} expected")
        samples = np.frombuffer(data, ">u2").reshape(img.height, img.width, 3)
        wide = samples.astype(np.uint16) if maxval == 65535 else np.round(
            np.minimum(samples, maxval) * (65535 / maxval)).astype(np.uint16)
        return wide  # PPM holds no EXIF: nothing to turn
    rawmode = _tile_rawmode(img)

    def decode(unpacker: str) -> np.ndarray:
        again = _open_header(fp, path)
        again.tile = [(*again.tile[0][:3], unpacker)]
        again.load()
        ImageOps.exif_transpose(again, in_place=True)
        return np.asarray(again).astype(np.uint16)

    if rawmode == "LA;16B":
        raw = decode("RGBA")
        grey, alpha = raw[..., 0] << 8 | raw[..., 1], raw[..., 2] << 8 | raw[..., 3]
        wide = np.stack([grey, grey, grey, alpha], axis=2)
    else:
        wide = decode(rawmode) << 8 | decode(rawmode.replace("16B", "16L"))
        key = img.info.get("transparency")
        if isinstance(key, tuple) and wide.shape[2] == 3:  # a tRNS colour key: those pixels are transparent
            alpha = np.where((wide == np.array(key, np.uint16)).all(axis=2), 0, 65535).astype(np.uint16)
            wide = np.concatenate([wide, alpha[:, :, None]], axis=2)
    return wide


def image_metadata(path: str | os.PathLike) -> ImageMetadata:
    """The EXIF and ICC profile of an image file (for :func:`save_image` to write into an output); no pixels
    are decoded.

    The EXIF is as stored, orientation included: :func:`save_image` sets the orientation to 1 (upright) in what
    it writes, since :func:`load_image` has already turned the pixels.

    Example:
        >>> import tempfile, numpy as np, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.jpg")
        >>> Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(path, icc_profile=b"not a real profile")
        >>> image_metadata(path)
        ImageMetadata(exif=None, icc_profile=b'not a real profile')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with path.open("rb") as fp:
            info = _open_header(fp, path).info
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {path} as an image ({err})") from None
    return ImageMetadata(info.get("exif") or None, info.get("icc_profile") or None)


def save_image(
    img: Image.Image | np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
    exif: bytes | Image.Exif | None = None,
    icc_profile: bytes | None = None,
) -> Path:
    """Write ``img`` to ``path`` atomically: a crash never leaves a half-written file under that name.

    The format follows the suffix (:data:`IMAGE_SUFFIXES`; others are refused). Tensors and float arrays are
    clamped to [0, 1] and quantised to 8 bits; NaN or Inf values are refused. uint16 arrays are written at 16
    bits: colour (3 or 4 channels) as PNG or PPM, grey as PNG, TIFF or PGM. The file is flushed to disk
    (fsync) before it is renamed into place, and gets the permissions ``open()`` would give.

    Args:
        img: a PIL image, a numpy array (HxW or HxWxC: uint8, uint16 or float) or a tensor (CxHxW, or a batch
            of one).
        path: the file to write; its folder is created.
        quality: JPEG and WebP quality, 1-100 (ignored by lossless formats).
        exif: EXIF to write (raw bytes, as in ``image_metadata(src).exif``, or a ``PIL.Image.Exif``); its
            orientation is set to 1, the pixels being upright. ``None``: a PIL image's own ``info["exif"]``, if
            any; ``b""``: none. Written in JPEG, PNG, WebP and TIFF; other formats hold no metadata.
        icc_profile: the colour profile to embed, the same way (``None``: a PIL image's own; ``b""``: none).

    Example:
        >>> import tempfile, numpy as np, os
        >>> folder = tempfile.mkdtemp()
        >>> save_image(np.zeros((4, 5, 3), np.uint16), os.path.join(folder, "deep.png")).name
        'deep.png'
        >>> load_image(os.path.join(folder, "deep.png")).dtype
        dtype('uint16')
        >>> try:
        ...     save_image(np.zeros((4, 5)), os.path.join(folder, "a.xyz"))
        ... except ValueError as err:
        ...     print(str(err).split("; ")[1])
        accepted: .png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, .pgm
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {path}: unknown image suffix {path.suffix!r}; "
                         f"accepted: {', '.join(IMAGE_SUFFIXES)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be a whole number from 1 to 100, got {quality!r}")
    if isinstance(img, Image.Image):
        exif = img.info.get("exif") if exif is None else exif
        icc_profile = img.info.get("icc_profile") if icc_profile is None else icc_profile
    exif = _upright_exif(exif)
    pixels = _pixels_to_write(img, path)
    if isinstance(pixels, np.ndarray):  # 16-bit colour, which PIL cannot hold
        if fmt not in ("PNG", "PPM"):
            raise ValueError(f"cannot write {path}: {fmt} cannot hold 16-bit colour; use .png or .ppm, or convert "
                             "to 8 bits first ((array >> 8).astype(np.uint8))")
        data = _encode_png16(pixels, exif, icc_profile) if fmt == "PNG" else _encode_ppm16(pixels, path)
        _write_atomic(path, lambda f: f.write(data))
        return path
    if fmt == "JPEG" and pixels.mode not in ("L", "RGB", "CMYK"):
        raise ValueError(f"cannot write {path}: JPEG holds grey or RGB, not mode {pixels.mode} "
                         "(drop the alpha channel or write .png)")
    if pixels.mode.startswith("I;16") and fmt not in ("PNG", "TIFF", "PPM"):
        raise ValueError(f"cannot write {path}: {fmt} cannot hold 16-bit grey; use .png, .tif or .pgm")
    options: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt in _METADATA_FORMATS:
        options.update({k: v for k, v in (("exif", exif), ("icc_profile", icc_profile)) if v})
    _write_atomic(path, lambda f: pixels.save(f, format=fmt, **options))
    return path


def _pixels_to_write(img: Image.Image | np.ndarray | torch.Tensor, path: Path) -> Image.Image | np.ndarray:
    """A PIL image, or a uint16 H x W x 3/4 array for 16-bit colour; NaN, Inf and other dtypes refused."""
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"save_image writes one image; got a batch of {t.shape[0]}")
            t = t[0]
        if t.is_floating_point():
            t = t.float()  # numpy has no bfloat16; 8-bit output needs no more than float32
        if t.ndim != 3:
            raise ValueError(f"cannot write {path}: a tensor image is CxHxW or 1xCxHxW, got shape {tuple(t.shape)}")
        img = t.permute(1, 2, 0).numpy()
    if isinstance(img, Image.Image) and img.mode != "F":
        return img
    if isinstance(img, Image.Image):  # float pixels: written like a float array
        img = np.asarray(img)
    if not isinstance(img, np.ndarray):
        raise TypeError(f"cannot write {path}: unsupported type {type(img).__name__}; "
                        "save_image takes a PIL image, a numpy array or a tensor")
    arr = img
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"cannot write {path}: the image contains NaN or Inf values")
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    elif arr.dtype not in _INT_MAX:
        raise ValueError(f"cannot write {path}: dtype {arr.dtype}; uint8, uint16 or float (in [0, 1]) is accepted")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise ValueError(f"cannot write {path}: an image is HxW or HxWxC with 1, 3 or 4 channels, got {arr.shape}")
    if arr.dtype == np.uint16 and arr.ndim == 3:
        return arr
    return Image.fromarray(np.ascontiguousarray(arr))


def _upright_exif(exif: bytes | Image.Exif | None) -> bytes | None:
    """The EXIF to write, with its orientation set to 1: the pixels have already been turned upright."""
    if not exif:
        return None
    if isinstance(exif, bytes) and not exif.startswith(b"Exif\0\0"):
        exif = b"Exif\0\0" + exif  # the APP1 header JPEG needs (a PNG eXIf chunk stores the data without it)
    parsed = exif if isinstance(exif, Image.Exif) else Image.Exif()
    if parsed is not exif:
        parsed.load(exif)
    if parsed.get(_ORIENTATION, 1) == 1 and isinstance(exif, bytes):
        return exif  # nothing to change: the bytes as they came, maker notes and all
    parsed[_ORIENTATION] = 1
    return parsed.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png16(pixels: np.ndarray, exif: bytes | None, icc_profile: bytes | None) -> bytes:
    """A 16-bit RGB or RGBA PNG file (PIL has no such mode), its rows filtered as libpng would."""
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels, ">u2").view(np.uint8).reshape(height, width * channels * 2)
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(b"Exif\0\0")))
    chunks += [_png_chunk(b"IDAT", zlib.compress(_filter_rows(rows, channels * 2), 6)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _filter_rows(rows: np.ndarray, bpp: int) -> bytes:
    """PNG-filtered rows: each row takes the filter (none, sub, up, average, Paeth) whose output has the least
    sum of absolute values, libpng's heuristic for small files. Bands of rows keep the memory bounded."""
    height, width = rows.shape
    out = np.empty((height, width + 1), np.uint8)
    band = max(1, (1 << 20) // width)
    for start in range(0, height, band):
        x = rows[start:start + band].astype(np.int16)
        up = np.vstack([rows[start - 1:start].astype(np.int16) if start else np.zeros((1, width), np.int16), x[:-1]])
        left = np.pad(x, ((0, 0), (bpp, 0)))[:, :width]
        upleft = np.pad(up, ((0, 0), (bpp, 0)))[:, :width]
        pa, pb, pc = np.abs(up - upleft), np.abs(left - upleft), np.abs(left + up - 2 * upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        candidates = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(np.uint8)
        cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
        choice = cost.argmin(axis=0)
        out[start:start + band, 0] = choice
        out[start:start + band, 1:] = candidates[choice, np.arange(len(choice))]
    return out.tobytes()


def _encode_ppm16(pixels: np.ndarray, path: Path) -> bytes:
    if pixels.shape[2] != 3:
        raise ValueError(f"cannot write {path}: PPM holds RGB, not {pixels.shape[2]} channels; write .png")
    height, width, _ = pixels.shape
    return f"P6\n{width} {height}\n65535\n".encode() + pixels.astype(">u2").tobytes()


def _write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write`` into a new temporary file beside ``path``, fsync it, rename it into place, then
    fsync the folder (where the system allows) so that the rename itself survives a crash.

    The temporary file is created by ``os.open`` with mode 0o666, so the kernel applies the umask (and any
    default ACL) as for ``open()``; nothing reads or changes the process-wide umask, which other threads share.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # another writer's temporary name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder; its renames are durable without it
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _check_float(name: str, values: np.ndarray | torch.Tensor) -> None:
    # One pass over the data: the extremes are NaN when any value is, and infinite when any value is.
    extremes = torch.aminmax(values) if isinstance(values, torch.Tensor) else (values.min(), values.max())
    lo, hi = (float(v) for v in extremes)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise _fail(name, "contains NaN or Inf values")
    if lo < 0.0 or hi > 1.0:
        raise _fail(
            name, f"float values must lie in [0, 1], found min {lo:.4g} and max {hi:.4g} (divide 8-bit data by 255)"
        )


def _split_alpha(name: str, t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, H, W) with C in 1/3/4 -> (B, 3, H, W) colour and the channel count."""
    channels = t.shape[1]
    if channels not in (1, 3, 4):
        raise _fail(name, f"has {channels} channels; 1 (grey), 3 (RGB) or 4 (RGBA) are accepted")
    if channels == 1:
        return t.expand(-1, 3, -1, -1), channels
    return t[:, :3], channels


def _pil_to_numpy(img: Image.Image, name: str) -> tuple[np.ndarray, str]:
    """The pixels of ``img`` as an array, and the PIL mode a result comes back in.

    L, RGB, RGBA, 16-bit grey and F (float in [0, 1]) are kept; I (32-bit integers) is read as 16-bit grey
    when its values fit; 1 becomes L; palette, grey + alpha, CMYK, YCbCr and the like become RGB, or RGBA
    when they carry transparency.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16), "I;16"
    if mode == "I":
        values = np.asarray(img)
        if values.min() < 0 or values.max() > 65535:
            raise _fail(name, f"is a PIL mode I image with values from {values.min()} to {values.max()}; "
                        "integer images are read as 16-bit, 0 to 65535")
        return values.astype(np.uint16), "I"
    if mode == "F":
        return np.asarray(img), "F"
    if mode == "1":
        img = img.convert("L")
    elif mode not in ("L", "RGB", "RGBA") or "transparency" in img.info:
        target = "RGBA" if mode in ("LA", "La", "PA", "RGBa") or "transparency" in img.info else "RGB"
        try:
            img = img.convert(target)
        except ValueError as err:
            raise _fail(name, f"is a PIL image of mode {mode}, which cannot be converted to {target} ({err})") from None
    return np.asarray(img), img.mode


def to_tensor(img: ImageLike, *, name: str = "image") -> tuple[torch.Tensor, ImageSpec]:
    """Validate ``img`` and return it as float32 ``(B, 3, H, W)`` in [0, 1] with its :class:`ImageSpec`.

    Tensors keep their autograd history and device (only the dtype changes); other kinds land on the CPU.
    A path is read by :func:`load_image` (upright, 16-bit colour as a uint16 array, the default pixel limit).

    Example:
        >>> import numpy as np
        >>> t, spec = to_tensor(np.zeros((4, 5), np.uint8))
        >>> tuple(t.shape), spec.layout, spec.channels
        ((1, 3, 4, 5), 'HW', 1)
    """
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img)
    if isinstance(img, Image.Image):
        arr, mode = _pil_to_numpy(img, name)
        t, spec = _numpy_to_tensor(arr, name)
        alpha = Image.fromarray(arr[:, :, 3]) if spec.channels == 4 else None
        metadata = ImageMetadata(img.info.get("exif") or None, img.info.get("icc_profile") or None)
        return t, ImageSpec("pil", spec.layout, spec.channels, mode, alpha=alpha, metadata=metadata)
    if isinstance(img, np.ndarray):
        return _numpy_to_tensor(img, name)
    if isinstance(img, torch.Tensor):
        return _torch_to_tensor(img, name)
    raise TypeError(f"{name}: unsupported type {type(img).__name__}. Accepted: {_ACCEPTED}.")


def _numpy_to_tensor(arr: np.ndarray, name: str) -> tuple[torch.Tensor, ImageSpec]:
    if arr.size == 0:
        raise _fail(name, f"is empty (shape {arr.shape})")
    if arr.ndim == 2:
        layout, hwc = "HW", arr[:, :, None]
    elif arr.ndim == 3:
        layout, hwc = "HWC", arr
    else:
        raise _fail(name, f"is a {arr.ndim}-D array of shape {arr.shape}; an image is HxW or HxWxC")
    if arr.dtype in _INT_MAX:
        scaled = hwc.astype(np.float32) / _INT_MAX[arr.dtype]
    elif arr.dtype.kind == "f":
        _check_float(name, arr)
        scaled = hwc.astype(np.float32)
    else:
        raise _fail(name, f"has dtype {arr.dtype}; uint8, uint16 or float arrays are accepted")
    t = torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)[None]
    colour, channels = _split_alpha(name, t)
    alpha = arr[:, :, 3].copy() if channels == 4 else None
    return colour.contiguous(), ImageSpec("numpy", layout, channels, arr.dtype, alpha=alpha)


def _torch_to_tensor(t: torch.Tensor, name: str) -> tuple[torch.Tensor, ImageSpec]:
    if t.numel() == 0:
        raise _fail(name, f"is empty (shape {tuple(t.shape)})")
    if t.ndim == 3:
        layout, b = "CHW", t[None]
    elif t.ndim == 4:
        layout, b = "BCHW", t
    else:
        raise _fail(name, f"is a {t.ndim}-D tensor of shape {tuple(t.shape)}; a tensor image is CxHxW or BxCxHxW")
    if not t.dtype.is_floating_point:
        raise _fail(name, f"tensor has dtype {t.dtype}; use a float tensor in [0, 1] (e.g. t.float() / 255)")
    _check_float(name, t.detach())
    colour, channels = _split_alpha(name, b)
    alpha = b[:, 3:] if channels == 4 else None
    return colour.float(), ImageSpec("tensor", layout, channels, t.dtype, device=t.device, alpha=alpha)


_PIL_DTYPES = {"I;16": np.dtype(np.uint16), "I": np.dtype(np.uint16), "F": np.dtype(np.float32)}


def from_tensor(t: torch.Tensor, spec: ImageSpec) -> Image.Image | np.ndarray | torch.Tensor:
    """Give a float ``(B, 3, H, W)`` result back in the kind, dtype, layout and channel count of ``spec``.

    Grey inputs get the mean of the three channels back. Tensors come back exactly as computed (a network's
    output may overshoot [0, 1] slightly, and clamping would change published numbers and gradients); arrays
    and PIL images are clamped to [0, 1] before quantisation. A PIL result carries the input's EXIF and ICC
    profile in ``.info``, so that :func:`save_image` writes them.
    """
    if spec.channels == 1:
        t = t.mean(1, keepdim=True)
    if spec.kind == "tensor":
        t = t.to(device=spec.device, dtype=spec.dtype)
        if spec.channels == 4:
            t = torch.cat([t, spec.alpha.to(t.device)], 1)
        return t if spec.layout == "BCHW" else t[0]
    arr = t[0].detach().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    dtype = np.dtype(spec.dtype) if spec.kind == "numpy" else _PIL_DTYPES.get(spec.dtype, np.dtype(np.uint8))
    arr = np.round(arr * _INT_MAX[dtype]).astype(dtype) if dtype in _INT_MAX else arr.astype(dtype)
    if spec.kind == "pil":
        if spec.channels == 4:
            img = Image.fromarray(arr, "RGB")
            img.putalpha(spec.alpha)
        else:
            img = Image.fromarray(arr[:, :, 0] if spec.channels == 1 else arr)
            if spec.dtype == "I":
                img = img.convert("I")
        for key, value in (("exif", spec.metadata.exif), ("icc_profile", spec.metadata.icc_profile)):
            if value:
                img.info[key] = value
        return img
    if spec.channels == 4:
        arr = np.concatenate([arr, spec.alpha[:, :, None]], axis=2)
    return arr[:, :, 0] if spec.layout == "HW" else arr
