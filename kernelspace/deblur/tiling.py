"""Overlapping tiles for large images: each processed alone (bounded memory, local blur), then blended.

A tile's result is weighted by a window that is 1 inside the tile and falls smoothly (raised cosine) to nearly 0
over ``overlap`` pixels at each side that borders another tile; sides on the image's border keep weight 1.
The blend divides by the summed weights, so the windows need not sum to one exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Tile", "split_tiles", "tile_window"]


@dataclass(frozen=True)
class Tile:
    """A rectangle of the image: ``image[..., top : top + height, left : left + width]``."""

    top: int
    left: int
    height: int
    width: int

    @property
    def region(self) -> tuple[slice, slice]:
        """The (rows, columns) slices that cut this tile out of the image."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _starts(length: int, size: int, overlap: int) -> list[int]:
    """Evenly spaced starts of ``size``-long tiles covering ``length`` with at least ``overlap`` in common."""
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def split_tiles(height: int, width: int, size: int = 512, overlap: int = 64) -> list[Tile]:
    """Tiles of at most ``size`` x ``size`` covering an image, neighbours sharing at least ``overlap`` pixels.

    Example:
        >>> tiles = split_tiles(300, 700, size=512, overlap=64)
        >>> len(tiles), tiles[1]
        (2, Tile(top=0, left=188, height=300, width=512))
    """
    if size < 16 or not 0 <= overlap < size // 2:
        raise ValueError(f"tile size must be >= 16 and overlap in [0, size / 2), got size={size}, overlap={overlap}")
    rows, cols = _starts(height, size, overlap), _starts(width, size, overlap)
    return [Tile(top, left, min(size, height), min(size, width)) for top in rows for left in cols]


def _ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    weight = torch.ones(length)
    if overlap > 0:
        # Raised cosine sampled at pixel centres: never exactly 0, so every pixel has some weight.
        edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)
        if rise:
            weight[:overlap] = torch.minimum(weight[:overlap], edge)
        if fall:
            weight[-overlap:] = torch.minimum(weight[-overlap:], edge.flip(0))
    return weight


def tile_window(tile: Tile, height: int, width: int, overlap: int = 64) -> torch.Tensor:
    """The (tile.height, tile.width) blending weights of ``tile`` in an image of ``height`` x ``width``.

    Example:
        >>> w = tile_window(Tile(0, 188, 300, 512), 300, 700, overlap=64)
        >>> round(w[0, 0].item(), 4), w[0, -1].item(), w[0, 100].item()  # left side inside, right on the border
        (0.0002, 1.0, 1.0)
    """
    rows = _ramp(tile.height, overlap, tile.top > 0, tile.top + tile.height < height)
    cols = _ramp(tile.width, overlap, tile.left > 0, tile.left + tile.width < width)
    return rows[:, None] * cols[None, :]
