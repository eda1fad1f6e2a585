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

Memory: the patches of a large image are processed a block of whole cells at a time (a band of cell rows, or a
piece of one row), each block's patches overlap-added into the output, so the working memory stays near
:data:`TILE_BYTES` whatever the image size; the output equals the one-block result up to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blur import fft_size, mirrored_region, psf_blur, reflect_pad

__all__ = ["space_varying_blur", "patch_spectra", "blur_from_spectra", "blur_adjoint", "PatchSpectra"]


TILE_BYTES = 64 << 20
"""Working memory (bytes) one block of cells may use: larger images are blurred block by block."""


class PatchSpectra:
    """The FFTs of the windowed patches of one image batch, ready to be blurred by any PSF field."""

    def __init__(self, spectra: torch.Tensor, shape: tuple[int, ...], cell: int, psf_size: int, n: int) -> None:
        self.spectra, self.shape, self.cell, self.psf_size, self.n = spectra, shape, cell, psf_size, n


class _PatchGeometry:
    """Sizes shared by the patch-wise passes: each cell's patch spans the cell, half a cell on each side (where
    its bilinear window reaches) and the PSF's radius; patches overlap by ``patch - cell``."""

    def __init__(self, height: int, width: int, cell: int, psf_size: int) -> None:
        if height % cell or width % cell:
            raise ValueError(f"image sides ({height}, {width}) must be multiples of the cell size {cell}")
        self.height, self.width, self.cell, self.r = height, width, cell, psf_size // 2
        self.grid = (height // cell, width // cell)
        self.margin = cell // 2 + self.r
        self.patch = 2 * cell + 2 * self.r
        self.n = fft_size(self.patch + 2 * self.r)

    def check_field(self, psf: torch.Tensor) -> None:
        gh, gw = self.grid
        s = 2 * self.r + 1
        if psf.ndim != 5 or psf.shape[-4:] != (gh, gw, s, s):
            raise ValueError(f"psf field must have shape (B, {gh}, {gw}, {s}, {s}), got {tuple(psf.shape)}")

    def cell_bytes(self, images: int, psfs: int, itemsize: int) -> int:
        """Working memory per cell of a block: for each image channel the windowed patch, its spectrum, the
        product, its inverse and the cropped copy; for each PSF its padded copies and spectrum."""
        spectrum = self.n * (self.n // 2 + 1) * 2 * itemsize
        per_image = 2 * self.patch**2 * itemsize + 2 * spectrum + self.n**2 * itemsize
        return images * per_image + psfs * (2 * self.n**2 * itemsize + spectrum)

    def blocks(self, cell_bytes: int) -> list[tuple[slice, slice]]:
        """Blocks of whole cells (row slice, column slice) that each fit :data:`TILE_BYTES`, of balanced sizes:
        bands of full cell rows where a row fits, else pieces of one row."""
        gh, gw = self.grid
        fit = max(1, TILE_BYTES // max(cell_bytes, 1))
        if fit >= gw:
            size = _balanced(gh, min(gh, fit // gw))
            return [(slice(i, min(i + size, gh)), slice(0, gw)) for i in range(0, gh, size)]
        size = _balanced(gw, fit)
        return [(slice(i, i + 1), slice(j, min(j + size, gw))) for i in range(gh) for j in range(0, gw, size)]

    def windows(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(gh, patch) and (gw, patch): each patch's window, the slice of the whole-frame hat that it covers."""
        starts = torch.arange(self.patch, device=device)
        out = []
        for length, cells in ((self.height, self.grid[0]), (self.width, self.grid[1])):
            w = _frame_windows(length, cells, self.cell, self.margin, 0, device, dtype)
            out.append(w.gather(1, torch.arange(cells, device=device)[:, None] * self.cell + starts))
        return out[0], out[1]

    def spectra(self, x: torch.Tensor, rows: slice, cols: slice, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
        """FFTs (B, C, rows, cols, n, n // 2 + 1) of the windowed patches of a block of cells."""
        cell, margin, patch = self.cell, self.margin, self.patch
        region = mirrored_region(
            x, (rows.start * cell - margin, rows.stop * cell + margin), (cols.start * cell - margin, cols.stop * cell + margin)
        )
        patches = region.unfold(2, patch, cell).unfold(3, patch, cell)  # (B, C, rows, cols, patch, patch)
        patches = patches * (wy[rows, None, :, None] * wx[None, cols, None, :])
        return torch.fft.rfft2(patches, s=(self.n, self.n))

    def blur_into(self, out: torch.Tensor, spectra: torch.Tensor, psf: torch.Tensor, rows: slice, cols: slice) -> None:
        """Blur a block's patch spectra with its PSFs (B or 1, rows, cols, S, S) and overlap-add them into ``out``."""
        n, patch, cell, r = self.n, self.patch, self.cell, self.r
        s = psf.shape[-1]
        # Centre the PSF at index 0 so that the circular correlation needs no shift afterwards.
        k = torch.roll(F.pad(psf, (0, n - s, 0, n - s)), shifts=(-r, -r), dims=(-2, -1))
        blurred = torch.fft.irfft2(spectra * torch.fft.rfft2(k).conj().unsqueeze(1), s=(n, n))
        blurred = blurred[..., :patch, :patch]  # (B, C, rows, cols, patch, patch)
        b, c, bh, bw = blurred.shape[:4]
        columns = blurred.permute(0, 1, 4, 5, 2, 3).reshape(b, c * patch * patch, bh * bw)
        block = F.fold(columns, ((bh - 1) * cell + patch, (bw - 1) * cell + patch), kernel_size=patch, stride=cell)
        # The block's frame starts a margin above and left of its first cell; what falls outside the image is dropped.
        top, left = rows.start * cell - self.margin, cols.start * cell - self.margin
        t0, l0 = max(top, 0), max(left, 0)
        t1, l1 = min(top + block.shape[-2], self.height), min(left + block.shape[-1], self.width)
        out[..., t0:t1, l0:l1] += block[..., t0 - top : t1 - top, l0 - left : l1 - left]

    def correlate(self, framed: torch.Tensor, spectra: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """The adjoint of :meth:`blur_into` in the PSFs: each patch of a residual, correlated with the block's patch
        spectra and summed over channels; (B, rows, cols, S, S). ``framed`` is the (B, C, H, W) residual with
        ``margin`` zeros on every side (the output a patch wrote outside the image was dropped: no residual)."""
        n, patch, cell, r = self.n, self.patch, self.cell, self.r
        region = framed[..., rows.start * cell : (rows.stop - 1) * cell + patch,
                        cols.start * cell : (cols.stop - 1) * cell + patch]
        patches = region.unfold(2, patch, cell).unfold(3, patch, cell)  # (B, C, rows, cols, patch, patch)
        lags = torch.fft.irfft2((spectra * torch.fft.rfft2(patches, s=(n, n)).conj()).sum(1), s=(n, n))
        return lags.roll((r, r), dims=(-2, -1))[..., : 2 * r + 1, : 2 * r + 1]


def _balanced(total: int, most: int) -> int:
    """The block length that splits ``total`` into as few pieces of at most ``most`` as possible, evenly."""
    pieces = math.ceil(total / max(most, 1))
    return math.ceil(total / pieces)


def patch_spectra(x: torch.Tensor, cell: int, psf_size: int) -> PatchSpectra:
    """Window ``x`` (B, C, H, W; H and W multiples of ``cell``) into overlapping patches and FFT them."""
    b, c, height, width = x.shape
    geo = _PatchGeometry(height, width, cell, psf_size)
    wy, wx = geo.windows(x.device, x.dtype)
    spectra = torch.empty(b, c, *geo.grid, geo.n, geo.n // 2 + 1, dtype=x.dtype.to_complex(), device=x.device)
    for rows, cols in geo.blocks(geo.cell_bytes(b * c, 0, x.element_size())):
        spectra[:, :, rows, cols] = geo.spectra(x, rows, cols, wy, wx)
    return PatchSpectra(spectra, (b, c, height, width), cell, psf_size, geo.n)


def blur_from_spectra(spec: PatchSpectra, psf: torch.Tensor) -> torch.Tensor:
    """Blur the image behind ``spec`` with ``psf`` of shape (B or 1, gh, gw, S, S); returns (B, C, H, W)."""
    b, c, height, width = spec.shape
    geo = _PatchGeometry(height, width, spec.cell, spec.psf_size)
    geo.check_field(psf)
    out = torch.zeros(b, c, height, width, dtype=spec.spectra.real.dtype, device=spec.spectra.device)
    for rows, cols in geo.blocks(geo.cell_bytes(b * c, psf.shape[0], out.element_size())):
        geo.blur_into(out, spec.spectra[:, :, rows, cols], psf[:, rows, cols], rows, cols)
    return out


def blur_adjoint(spec: PatchSpectra, residual: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`blur_from_spectra` in the PSFs: the gradient, with respect to the (B, gh, gw, S, S)
    PSF field, of ``(blur_from_spectra(spec, psf) * residual).sum()``. Lets a solver step without autograd.

    Example:
        >>> import torch
        >>> x, res = torch.rand(1, 2, 64, 64), torch.rand(1, 2, 64, 64)
        >>> psf = torch.rand(1, 2, 2, 5, 5, requires_grad=True)
        >>> spec = patch_spectra(x, 32, 5)
        >>> (blur_from_spectra(spec, psf) * res).sum().backward()
        >>> bool(torch.allclose(blur_adjoint(spec, res), psf.grad, atol=1e-4))
        True
    """
    b, c, height, width = spec.shape
    geo = _PatchGeometry(height, width, spec.cell, spec.psf_size)
    framed = F.pad(residual, (geo.margin,) * 4)
    s = 2 * geo.r + 1
    out = torch.empty(b, *geo.grid, s, s, dtype=residual.dtype, device=residual.device)
    for rows, cols in geo.blocks(geo.cell_bytes(b * c, 0, residual.element_size())):
        out[:, rows, cols] = geo.correlate(framed, spec.spectra[:, :, rows, cols], rows, cols)
    return out


def _patch_blur(x: torch.Tensor, psf: torch.Tensor, cell: int) -> torch.Tensor:
    """:func:`patch_spectra` then :func:`blur_from_spectra`, block by block: only one block's spectra at a time."""
    b, c, height, width = x.shape
    geo = _PatchGeometry(height, width, cell, psf.shape[-1])
    geo.check_field(psf)
    wy, wx = geo.windows(x.device, x.dtype)
    out = torch.zeros_like(x)
    for rows, cols in geo.blocks(geo.cell_bytes(b * c, psf.shape[0], x.element_size())):
        geo.blur_into(out, geo.spectra(x, rows, cols, wy, wx), psf[:, rows, cols], rows, cols)
    return out


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
    return _patch_blur(x, psf, cell)
