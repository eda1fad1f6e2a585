"""Pictures of blur: the local PSFs a kernel implies, drawn as a grid over the image (a "blur map")."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import ImageLike, to_tensor
from .models import KernelSpaceModel

__all__ = ["render_kernel"]


def render_kernel(
    kernel: torch.Tensor,
    model: KernelSpaceModel | None = None,
    image: ImageLike | None = None,
    *,
    fill: float = 0.8,
    color: tuple[int, int, int] = (255, 220, 40),
) -> Image.Image:
    """Draw each cell's PSF, normalised to its peak, at the cell's centre; optionally over the image.

    Args:
        kernel: a kernel of ``model`` (B, channels, h, w; the first of the batch is drawn), or a PSF field
            (h, w, S, S), or one PSF (S, S).
        model: the model that made ``kernel``; it must expose ``psf_field`` and ``cell`` (as
            :class:`~kernelspace.models.KernelField` does). ``None`` loads the default model, unless ``kernel``
            is already a PSF (field).
        image: the image the kernel belongs to (any kind :func:`kernelspace.io.to_tensor` accepts); drawn dimmed
            underneath. Without it the PSFs are drawn on black, one cell per ``model.cell`` pixels.
        fill: the fraction of a cell's side that its PSF drawing spans.
        color: RGB of the PSF drawings.

    Returns:
        An RGB PIL image the size of ``image`` (or of the kernel's grid).

    Example:
        >>> import torch
        >>> psf = torch.zeros(9, 9); psf[4, 2:7] = 0.2  # a horizontal 5-px blur
        >>> picture = render_kernel(psf.expand(2, 3, 9, 9), image=torch.rand(3, 100, 150))
        >>> picture.size, picture.mode
        ((150, 100), 'RGB')
    """
    field = _psf_field(kernel, model)
    gh, gw, s, _ = field.shape
    if image is not None:
        pixels, _ = to_tensor(image, name="image")
        base = pixels[0].expand(3, -1, -1).permute(1, 2, 0).numpy() * 0.5  # dimmed so the PSFs stand out
        height, width = base.shape[:2]
    else:
        side = getattr(model, "cell", 4 * s)
        height, width = gh * side, gw * side
        base = np.zeros((height, width, 3), dtype=np.float32)
    # A model's cells cover the image from its top-left corner (its grid lies over the padded image); a bare PSF
    # field is spread evenly over the picture.
    cell = getattr(model, "cell", None)
    cell_h, cell_w = (cell, cell) if cell else (height / gh, width / gw)
    cell = min(cell_h, cell_w)
    side = max(1, int(cell * fill))
    # Taps stay crisp when enlarged; when shrunk, area averaging keeps thin strokes visible.
    mode = "nearest" if side >= s else "area"
    drawn = F.interpolate(field.reshape(-1, 1, s, s).float(), size=(side, side), mode=mode)
    drawn = drawn / drawn.amax((2, 3), keepdim=True).clamp_min(1e-12)
    drawn = drawn.reshape(gh, gw, side, side).numpy()
    tint = np.asarray(color, dtype=np.float32) / 255
    for i in range(gh):
        for j in range(gw):
            top = int(round((i + 0.5) * cell_h - side / 2))
            left = int(round((j + 0.5) * cell_w - side / 2))
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + side, height), min(left + side, width)
            if y1 <= y0 or x1 <= x0:
                continue
            alpha = drawn[i, j, y0 - top : y1 - top, x0 - left : x1 - left, None]
            base[y0:y1, x0:x1] = base[y0:y1, x0:x1] * (1 - alpha) + tint * alpha
    return Image.fromarray((np.clip(base, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _psf_field(kernel: torch.Tensor, model: KernelSpaceModel | None) -> torch.Tensor:
    """(h, w, S, S) PSFs from a model kernel, a PSF field or one PSF."""
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(
            f"kernel must be a torch.Tensor (a model kernel, a PSF field or a PSF), got {type(kernel).__name__}"
        )
    kernel = kernel.detach().cpu()
    if kernel.ndim == 2 and model is None:
        return kernel[None, None]
    if kernel.ndim == 4 and model is None and kernel.shape[-1] == kernel.shape[-2] and kernel.shape[-1] % 2:
        return kernel
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be (B, channels, h, w), (h, w, S, S) or (S, S), got shape {tuple(kernel.shape)}")
    if model is None:
        from .hub import load_model

        model = load_model()
    if not hasattr(model, "psf_field"):
        raise TypeError(
            f"{type(model).__name__} kernels are latent codes, not PSFs: render_kernel needs a model with psf_field "
            "(KernelField), or a PSF field / PSF tensor"
        )
    return model.psf_field(kernel.to(model.device))[0].cpu()
