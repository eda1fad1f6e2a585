"""Space-varying blur as an "efficient filter flow": a grid of local PSFs, blended bilinearly.

The image is divided into cells of ``cell`` x ``cell`` pixels, each with its own PSF. Every pixel is blurred by
the bilinear blend of the PSFs of the (up to four) nearest cell centres; this is computed as the sum over
cells of ``(window_c * x) (*) psf_c``, where the windows are bilinear hats that sum to one everywhere
(Hirsch et al., "Efficient filter flow for space-variant multiframe blind deconvolution", CVPR 2010). Each
term lives on a patch of about two cells, so the cost grows with the image area, not with area x cells.

Convention (shared with :mod:`kernelspace.physics.psf`): ``psf[i, j]`` weighs the input pixel at offset
``(i - r, j - r)`` from the output pixel, ``r = size // 2`` — the cross-correlation that
``torch.nn.functional.conv2d`` computes. A uniform PSF field therefore equals a padded ``conv2d``.

The spectra of the windowed image patches depend only on the image, so :func:`patch_spectra` computes them once
and :func:`blur_from_spectra` reuses them when only the PSFs change (kernel estimation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blur import fft_size, psf_blur, reflect_pad

__all__ = ["space_varying_blur", "patch_spectra", "blur_from_spectra", "PatchSpectra"]


class PatchSpectra:
    """The FFTs of the windowed patches of one image batch, ready to be blurred by any PSF field."""

    def __init__(self, spectra: torch.Tensor, shape: tuple[int, ...], cell: int, psf_size: int, n: int) -> None:
        self.spectra, self.shape, self.cell, self.psf_size, self.n = spectra, shape, cell, psf_size, n


def patch_spectra(x: torch.Tensor, cell: int, psf_size: int) -> PatchSpectra:
    """Window ``x`` (B, C, H, W; H and W multiples of ``cell``) into overlapping patches and FFT them."""
    b, c, height, width = x.shape
    if height % cell or width % cell:
        raise ValueError(f"image sides ({height}, {width}) must be multiples of the cell size {cell}")
    r = psf_size // 2
    margin = cell // 2 + r
    ext = reflect_pad(x, margin)
    patch = 2 * cell + 2 * r
    gh, gw = height // cell, width // cell
    patches = ext.unfold(2, patch, cell).unfold(3, patch, cell)  # (B, C, gh, gw, patch, patch)
    # Each patch's window is the slice of the whole-frame hat that the patch covers.
    starts = torch.arange(patch, device=x.device)
    wy = _frame_windows(height, gh, cell, margin, 0, x.device, x.dtype)
    wy = wy.gather(1, torch.arange(gh, device=x.device)[:, None] * cell + starts)
    wx = _frame_windows(width, gw, cell, margin, 0, x.device, x.dtype)
    wx = wx.gather(1, torch.arange(gw, device=x.device)[:, None] * cell + starts)
    patches = patches * (wy[:, None, :, None] * wx[None, :, None, :])
    n = fft_size(patch + 2 * r)
    return PatchSpectra(torch.fft.rfft2(patches, s=(n, n)), (b, c, height, width), cell, psf_size, n)


def blur_from_spectra(spec: PatchSpectra, psf: torch.Tensor) -> torch.Tensor:
    """Blur the image behind ``spec`` with ``psf`` of shape (B or 1, gh, gw, S, S); returns (B, C, H, W)."""
    b, c, height, width = spec.shape
    cell, s, n = spec.cell, spec.psf_size, spec.n
    r = s // 2
    gh, gw = height // cell, width // cell
    if psf.shape[-4:] != (gh, gw, s, s):
        raise ValueError(f"psf field must have shape (B, {gh}, {gw}, {s}, {s}), got {tuple(psf.shape)}")
    # Centre the PSF at index 0 so that the circular correlation needs no shift afterwards.
    k = torch.roll(F.pad(psf, (0, n - s, 0, n - s)), shifts=(-r, -r), dims=(-2, -1))
    out = torch.fft.irfft2(spec.spectra * torch.fft.rfft2(k).conj().unsqueeze(1), s=(n, n))
    patch = 2 * cell + 2 * r
    out = out[..., :patch, :patch]  # (B, C, gh, gw, patch, patch)
    # Overlap-add the patches back (stride = cell), then drop the margin.
    cols = out.permute(0, 1, 4, 5, 2, 3).reshape(b, c * patch * patch, gh * gw)
    margin = cell // 2 + r
    full = F.fold(cols, (height + 2 * margin, width + 2 * margin), kernel_size=patch, stride=cell)
    return full[..., margin : margin + height, margin : margin + width]


def _frame_windows(length: int, cells: int, cell: int, r: int, extra: int, device, dtype) -> torch.Tensor:
    """(cells, length + 2r + extra) bilinear hats over a side padded by r (and ``extra`` more at the end); edge
    cells extend flat to the border."""
    t = torch.arange(length + 2 * r + extra, device=device, dtype=dtype) - r
    centres = (torch.arange(cells, device=device, dtype=dtype) + 0.5) * cell - 0.5
    w = (1 - (t[None] - centres[:, None]).abs() / cell).clamp_min(0)
    w[0, t <= centres[0]] = 1.0
    w[-1, t >= centres[-1]] = 1.0
    return w


def _whole_frame_blur(x: torch.Tensor, psf: torch.Tensor, cell: int) -> torch.Tensor:
    """The same blur with one FFT frame for the whole image: each cell's windowed image is transformed, and the
    products with the PSF spectra are summed before a single inverse FFT per channel. Cheaper than patches
    while the grid has few cells."""
    _, _, height, width = x.shape
    gh, gw, s = psf.shape[-4], psf.shape[-3], psf.shape[-1]
    r = s // 2
    ny, nx = fft_size(height + 2 * r), fft_size(width + 2 * r)
    # Pad straight to the FFT size (no zero fill); outputs r or more from the frame's edge see no wrap-around.
    pad = (r, nx - width - r, r, ny - height - r)
    padded = reflect_pad(x, pad)
    wy = _frame_windows(height, gh, cell, r, ny - height - 2 * r, x.device, x.dtype)
    wx = _frame_windows(width, gw, cell, r, nx - width - 2 * r, x.device, x.dtype)
    # The PSFs' zero rows are skipped by transforming along x first. The spectra are stored cell-major,
    # contiguous and physically conjugated: transposed (as the FFT leaves them) or lazily conjugated operands made
    # the products below 3x slower. One windowed copy at a time: stacking them in one transform was slower
    # (memory-bound) with two threads.
    kernels = torch.fft.fft(torch.fft.rfft(psf.movedim(0, 2), n=nx), n=ny, dim=-2).contiguous().conj_physical_()
    summed = None
    for i in range(gh):
        for j in range(gw):
            spectrum = torch.fft.rfft2(padded * (wy[i][:, None] * wx[j][None, :]))
            kernel = kernels[i, j].unsqueeze(1)
            # In place and fused (addcmul_): a broadcast product plus a sum cost 3.5x more here.
            summed = spectrum.mul_(kernel) if summed is None else summed.addcmul_(spectrum, kernel)
    # Correlating with a PSF stored from index 0 (not centred) shifts the result by r: frame row r + q lands on q.
    return torch.fft.irfft2(summed, s=(ny, nx))[..., :height, :width]


#: Grids up to this many cells are blurred in one frame, larger ones patch by patch (cost ~ area, not cells).
WHOLE_FRAME_MAX_CELLS = 4


def space_varying_blur(x: torch.Tensor, psf: torch.Tensor, cell: int) -> torch.Tensor:
    """Blur ``x`` (B, C, H, W; sides multiples of ``cell``) with a field of PSFs (B, H/cell, W/cell, S, S).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 64, 64)
        >>> delta = torch.zeros(1, 2, 2, 5, 5); delta[..., 2, 2] = 1
        >>> bool(torch.allclose(space_varying_blur(x, delta, cell=32), x, atol=1e-5))
        True
    """
    first = psf[:, :1, :1]
    if bool((psf == first).all()):  # a uniform field is one plain blur: one transform per channel, no windows
        return psf_blur(x, first[0, 0, 0] if psf.shape[0] == 1 else first[:, 0, 0])
    if psf.shape[-4] * psf.shape[-3] <= WHOLE_FRAME_MAX_CELLS:
        return _whole_frame_blur(x, psf, cell)
    return blur_from_spectra(patch_spectra(x, cell, psf.shape[-1]), psf)
