"""Blur operators in linear light: one PSF per image (uniform) or an average of warped copies (non-uniform).

Both keep the image size and treat the border the same way, by mirroring the image about its edge pixels (the
edge pixel itself is not repeated, as ``torch.nn.functional.pad(mode="reflect")`` does), because a photo's
scene continues past its frame and mirroring is the least wrong guess that keeps edges free of dark rims.

Orientation follows :mod:`kernelspace.physics.psf`: ``psf_blur(x, psf)`` is ``conv2d(reflect_pad(x), psf)``
(cross-correlation), and a homography ``H`` maps an *output* pixel ``(x, y, 1)`` to the position in the sharp
image that it sees, so a pure translation by ``(tx, ty)`` has the same effect as a PSF with all its weight at
trajectory point ``(tx, ty)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["fft_size", "reflect_pad", "mirrored_region", "psf_blur", "homography_blur"]

BAND_BYTES = 64 << 20
"""Working memory (bytes) :func:`psf_blur` may use at once: larger images are blurred in bands of rows."""


def fft_size(n: int) -> int:
    """The smallest integer >= n whose prime factors are 2, 3, 5 and 7 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def reflect_pad(x: torch.Tensor, pad: int | tuple[int, int, int, int]) -> torch.Tensor:
    """Mirror ``pad`` pixels onto the sides of ``(..., H, W)``, repeatedly where the image is narrower than the pad.

    ``pad`` is one number for every side or ``(left, right, top, bottom)`` as in :func:`torch.nn.functional.pad`.

    Example:
        >>> import torch
        >>> reflect_pad(torch.tensor([[[[1.0, 2.0, 3.0]]]]), 4)[0, 0, 4].tolist()  # one row: mirrored in rounds
        [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]
    """
    # F.pad's reflect mode refuses pads as large as the side, so small images are padded in rounds.
    left = [pad] * 4 if isinstance(pad, int) else list(pad)  # W left/right, H top/bottom still to add
    while any(left):
        h, w = x.shape[-2], x.shape[-1]
        step = [min(left[0], w - 1), min(left[1], w - 1), min(left[2], h - 1), min(left[3], h - 1)]
        mode = "reflect"
        if not any(step):  # a one-pixel side cannot be mirrored: repeat it instead
            step, mode = left, "replicate"
        lead = x.shape[:-2]
        x = F.pad(x.reshape(-1, 1, h, w), step, mode=mode)
        x = x.reshape(*lead, h + step[2] + step[3], w + step[0] + step[1])
        left = [a - b for a, b in zip(left, step)]
    return x


def _mirror_index(start: int, stop: int, length: int, device: torch.device) -> torch.Tensor:
    """Positions ``start .. stop - 1`` of a side of ``length`` mirrored about its edge pixels, as indices into it
    (the mirror image repeats with period ``2 * (length - 1)``; a one-pixel side repeats its pixel)."""
    i = torch.arange(start, stop, device=device)
    if length == 1:
        return torch.zeros_like(i)
    period = 2 * (length - 1)
    i = i.remainder(period)
    return torch.where(i < length, i, period - i)


def mirrored_region(x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows[0] .. rows[1] - 1`` and columns ``cols[0] .. cols[1] - 1`` of ``x`` (..., H, W) mirrored about its
    edges without bound, as :func:`reflect_pad` mirrors: a block of a padded image without padding all of it.

    Inside the image the block is a view; only the block is copied otherwise.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 5, 7)
        >>> torch.equal(mirrored_region(x, (-4, 9), (-2, 7)), reflect_pad(x, (2, 0, 4, 4)))
        True
    """
    for axis, (start, stop) in ((-2, rows), (-1, cols)):
        length = x.shape[axis]
        if 0 <= start and stop <= length:
            x = x.narrow(axis, start, stop - start)
        else:
            x = x.index_select(axis, _mirror_index(start, stop, length, x.device))
    return x


def psf_blur(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Blur every channel of each image with its PSF (cross-correlation, mirrored border), same size out.

    Computed with FFTs on the mirrored image, which costs the same for any PSF size and equals
    ``conv2d(reflect_pad(image), psf)`` up to float rounding. An image whose transforms would take more than
    :data:`BAND_BYTES` is blurred in bands of rows (each band with the rows its PSF reaches), so large images cost
    memory in proportion to a band, not to the image.

    Args:
        image: ``(B, C, H, W)`` floating point, in linear light.
        psf: ``(S, S)`` for all images or ``(B, S, S)`` one per image; ``S`` odd.

    Returns:
        ``(B, C, H, W)`` in ``image``'s dtype and device.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> x, k = torch.rand(2, 3, 20, 24, dtype=torch.float64), torch.rand(2, 5, 5, dtype=torch.float64)
        >>> direct = torch.cat([F.conv2d(reflect_pad(x[i:i+1], 2).transpose(0, 1), k[i, None, None]).transpose(0, 1)
        ...                     for i in range(2)])
        >>> torch.allclose(psf_blur(x, k), direct)
        True
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.dtype.is_floating_point:
        raise ValueError(f"image must be a floating (B, C, H, W) tensor, got {_describe(image)}")
    b, _, h, w = image.shape
    square = isinstance(psf, torch.Tensor) and psf.ndim in (2, 3) and psf.shape[-1] == psf.shape[-2]
    if not square or psf.shape[-1] % 2 == 0:
        raise ValueError(f"psf must be a square odd-sized (S, S) or (B, S, S) tensor, got {_describe(psf)}")
    if psf.ndim == 3 and psf.shape[0] != b:
        raise ValueError(f"psf holds {psf.shape[0]} kernels for a batch of {b} images; give one (S, S) or (B, S, S)")
    pad = psf.shape[-1] // 2
    kernel = psf.to(dtype=image.dtype, device=image.device)
    kernel = kernel[None] if kernel.ndim == 2 else kernel
    fw = fft_size(w + 2 * pad)
    # Per output row: the padded row, its spectrum, the product and the inverse, for every channel.
    row_bytes = 4 * image.shape[0] * image.shape[1] * fw * image.element_size()
    bands = max(1, math.ceil(h * row_bytes / BAND_BYTES))
    if bands == 1:
        return _blur_rows(image, kernel, 0, h, pad)
    size = math.ceil(h / bands)
    return torch.cat([_blur_rows(image, kernel, top, min(top + size, h), pad) for top in range(0, h, size)], -2)


def _blur_rows(image: torch.Tensor, kernel: torch.Tensor, top: int, bottom: int, pad: int) -> torch.Tensor:
    """Output rows ``top .. bottom - 1`` of :func:`psf_blur` from the mirrored rows they see."""
    w = image.shape[-1]
    padded = mirrored_region(image, (top - pad, bottom + pad), (-pad, w + pad))
    # Output row n uses padded rows n .. n + S - 1 <= rows + 2 * pad - 1: no wrap-around for any FFT length >= that.
    fh, fw = fft_size(bottom - top + 2 * pad), fft_size(w + 2 * pad)
    spectrum = torch.fft.rfft2(padded, s=(fh, fw)) * torch.fft.rfft2(kernel, s=(fh, fw)).conj()[:, None]
    return torch.fft.irfft2(spectrum, s=(fh, fw))[..., : bottom - top, :w].contiguous()


def homography_blur(
    image: torch.Tensor,
    homographies: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    chunk_pixels: int = 1 << 21,
) -> torch.Tensor:
    """Average of warped copies of each image: ``sum_k weights[b, k] * image[b](H[b, k] p)`` (bilinear).

    This is the exposure integral of a moving camera: each homography is the camera pose at one instant and its
    weight the time spent there. Poses with zero weight are skipped (so a batch may pad shorter pose lists).

    Args:
        image: ``(B, C, H, W)`` floating point, in linear light.
        homographies: ``(B, K, 3, 3)`` mapping output pixel coordinates ``(x, y, 1)`` (x = column, y = row, from
            the top-left pixel's centre) to the sharp image's.
        weights: ``(B, K)`` non-negative, normalised here to sum to 1 per image; ``None`` for equal weights.
        chunk_pixels: bound on ``poses x pixels`` warped at once (memory use ~ 40 bytes each).

    Returns:
        ``(B, C, H, W)`` in ``image``'s dtype and device.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 8, 8)
        >>> shift = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 1]])  # each output pixel sees its right neighbour
        >>> torch.allclose(homography_blur(x, shift[None, None])[..., :-1], x[..., 1:], atol=1e-5)
        True
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.dtype.is_floating_point:
        raise ValueError(f"image must be a floating (B, C, H, W) tensor, got {_describe(image)}")
    b, c, h, w = image.shape
    hom_ok = isinstance(homographies, torch.Tensor) and homographies.ndim == 4
    if not hom_ok or homographies.shape[0] != b or homographies.shape[2:] != (3, 3):
        raise ValueError(f"homographies must be a (B, K, 3, 3) tensor with B = {b}, got {_describe(homographies)}")
    k = homographies.shape[1]
    if weights is None:
        weights = torch.ones(b, k)
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (b, k):
        raise ValueError(f"weights must be a ({b}, {k}) tensor (one per pose), got {_describe(weights)}")
    if bool((weights < 0).any()) or not bool((weights.sum(1) > 0).all()):
        raise ValueError("weights must be non-negative with a positive sum for every image")
    weights = weights / weights.sum(1, keepdim=True)
    homographies = homographies.detach().cpu().to(torch.float64)
    device = image.device
    # How far any pose looks outside the frame, probed on the border (near-identity homographies move the border
    # most): the image is mirrored by that much first, because grid_sample's own "reflection" mode costs twice
    # its "border" mode. Mirroring about the edge pixels is what reflection with align_corners=True does.
    border = torch.tensor(
        [[x, y, 1.0] for x in (0, (w - 1) / 2, w - 1) for y in (0, (h - 1) / 2, h - 1)], dtype=torch.float64
    )
    seen = torch.einsum("bkij,pj->bkpi", homographies, border)
    seen = seen[..., :2] / seen[..., 2:]
    xs = torch.arange(w, dtype=torch.float32, device=device)
    ys = torch.arange(h, dtype=torch.float32, device=device)
    per_chunk = max(1, chunk_pixels // (h * w))
    out = []
    for i in range(b):
        used = weights[i] > 0
        last = torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
        far = torch.cat([-seen[i, used].amin((0, 1)), seen[i, used].amax((0, 1)) - last])
        margin = min(int(far.clamp_min(0).max().ceil()) + 2, 2 * max(h, w))  # + 2: bilinear reach and a safety pixel
        padded = reflect_pad(image[i : i + 1], margin)
        # Fold the padding offset and grid_sample's normalisation (align_corners=True: -1 and 1 on the edge
        # pixels' centres) into the homographies.
        to_grid = torch.tensor(
            [[2.0 / max(w + 2 * margin - 1, 1), 0.0, 2.0 * margin / max(w + 2 * margin - 1, 1) - 1.0],
             [0.0, 2.0 / max(h + 2 * margin - 1, 1), 2.0 * margin / max(h + 2 * margin - 1, 1) - 1.0],
             [0.0, 0.0, 1.0]],
            dtype=torch.float64,
        )
        total = torch.zeros(c, h * w, dtype=image.dtype, device=device)
        keep = torch.nonzero(used).flatten().tolist()
        for start in range(0, len(keep), per_chunk):
            idx = keep[start : start + per_chunk]
            hom = (to_grid @ homographies[i, idx]).to(device=device, dtype=torch.float32)
            # H (x, y, 1) = x * column 0 + (y * column 1 + column 2): separable, so two small outer products and
            # one broadcast add instead of a (poses, pixels, 3) matrix product.
            along_x = hom[:, :, 0, None] * xs  # (k, 3, w)
            along_y = hom[:, :, 1, None] * ys + hom[:, :, 2, None]  # (k, 3, h)
            grid = torch.empty(len(idx), h, w, 2, dtype=torch.float32, device=device)  # written in place: no copies
            inv_z = torch.add(along_x[:, 2, None, :], along_y[:, 2, :, None]).reciprocal_()
            for axis in (0, 1):
                torch.add(along_x[:, axis, None, :], along_y[:, axis, :, None], out=grid[..., axis]).mul_(inv_z)
            grid = grid.to(image.dtype).reshape(1, len(idx) * h, w, 2)
            warped = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=True)
            wk = weights[i, idx].to(device=device, dtype=image.dtype)
            total = total + torch.matmul(wk, warped.reshape(c, len(idx), h * w))
        out.append(total.reshape(c, h, w))
    return torch.stack(out)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
