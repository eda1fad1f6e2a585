"""Image input and output shared by every public function.

Accepted images: a path, a PIL image, a numpy array (HxW or HxWxC; uint8, uint16 or float in [0, 1]; 1, 3 or
4 channels) or a torch tensor (CxHxW or BxCxHxW, float in [0, 1]). :func:`to_tensor` turns any of them into
a float32 ``(B, 3, H, W)`` tensor plus an :class:`ImageSpec` that remembers how the image came in;
:func:`from_tensor` gives a result back in that same kind, dtype, layout and channel count. Grey images are
processed as three equal channels and returned as one; an alpha channel is set aside and returned untouched.
A path comes back as a PIL image (the kind it was read as).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["ImageLike", "ImageSpec", "to_tensor", "from_tensor", "load_image", "save_image", "IMAGE_SUFFIXES"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_ACCEPTED = (
    "a path, a PIL image, a numpy array (HxW or HxWxC; uint8, uint16 or float in [0, 1]; 1, 3 or 4 channels) "
    "or a torch tensor (CxHxW or BxCxHxW, float in [0, 1])"
)
_INT_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class ImageSpec:
    """How an image came in, so that a result can be given back the same way."""

    kind: str  # "pil", "numpy" or "tensor"
    layout: str  # "HW", "HWC", "CHW" or "BCHW"
    channels: int  # 1, 3 or 4 as given
    dtype: Any  # numpy dtype, torch dtype, or the PIL mode
    device: torch.device | None = None
    alpha: Any = None  # the alpha channel exactly as given (numpy array, tensor or PIL band)


def _fail(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what}. Accepted: {_ACCEPTED}.")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file; a clear error if it is missing or not an image.

    Example:
        >>> import tempfile, numpy as np, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
        >>> load_image(path).size
        (5, 4)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image ({err}); accepted formats: {', '.join(IMAGE_SUFFIXES)}") from None


def save_image(img: Image.Image | np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``img`` to ``path`` atomically: a crash never leaves a half-written file under that name.

    Tensors and float arrays are quantised to 8 bits; uint16 arrays are written as 16-bit PNGs.
    """
    path = Path(path)
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"save_image writes one image; got a batch of {t.shape[0]}")
            t = t[0]
        img = t.permute(1, 2, 0).numpy()
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype.kind == "f":
            arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        img = Image.fromarray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        img.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def _pil_to_numpy(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    return np.asarray(img)


def to_tensor(img: ImageLike, *, name: str = "image") -> tuple[torch.Tensor, ImageSpec]:
    """Validate ``img`` and return it as float32 ``(B, 3, H, W)`` in [0, 1] with its :class:`ImageSpec`.

    Tensors keep their autograd history and device (only the dtype changes); other kinds land on the CPU.

    Example:
        >>> import numpy as np
        >>> t, spec = to_tensor(np.zeros((4, 5), np.uint8))
        >>> tuple(t.shape), spec.layout, spec.channels
        ((1, 3, 4, 5), 'HW', 1)
    """
    if isinstance(img, (str, os.PathLike)):
        img = load_image(img)
    if isinstance(img, Image.Image):
        t, spec = to_tensor(_pil_to_numpy(img), name=name)
        alpha = img.getchannel("A") if spec.channels == 4 else None
        return t, ImageSpec("pil", spec.layout, spec.channels, img.mode if spec.channels != 4 else "RGBA", alpha=alpha)
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


def from_tensor(t: torch.Tensor, spec: ImageSpec) -> Image.Image | np.ndarray | torch.Tensor:
    """Give a float ``(B, 3, H, W)`` result back in the kind, dtype, layout and channel count of ``spec``.

    Grey inputs get the mean of the three channels back. Tensors come back exactly as computed (a network's
    output may overshoot [0, 1] slightly, and clamping would change published numbers and gradients); arrays
    and PIL images are clamped to [0, 1] before quantisation.
    """
    if spec.channels == 1:
        t = t.mean(1, keepdim=True)
    if spec.kind == "tensor":
        t = t.to(device=spec.device, dtype=spec.dtype)
        if spec.channels == 4:
            t = torch.cat([t, spec.alpha.to(t.device)], 1)
        return t if spec.layout == "BCHW" else t[0]
    arr = t[0].detach().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    dtype = np.dtype(spec.dtype) if spec.kind == "numpy" else np.dtype(np.uint16 if spec.dtype.startswith("I;16") else np.uint8)
    arr = np.round(arr * _INT_MAX[dtype]).astype(dtype) if dtype in _INT_MAX else arr.astype(dtype)
    if spec.kind == "pil":
        if spec.channels == 4:
            img = Image.fromarray(arr, "RGB")
            img.putalpha(spec.alpha)
            return img
        return Image.fromarray(arr[:, :, 0] if spec.channels == 1 else arr)
    if spec.channels == 4:
        arr = np.concatenate([arr, spec.alpha[:, :, None]], axis=2)
    return arr[:, :, 0] if spec.layout == "HW" else arr
