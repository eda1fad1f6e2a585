"""Image folders as datasets: clean photos (:class:`PhotoFolder`) and sharp/blurry pairs (:class:`PairedFolder`).

Paired layouts (:func:`find_pairs`):

- ``"gopro"``: ``SEQ/blur/NAME`` and ``SEQ/sharp/NAME`` (GOPRO_Large, one level of sequences, or the folder itself);
- ``"reds"``: ``{train,val,test}_blur/SEQ/NAME`` and ``{train,val,test}_sharp/SEQ/NAME``;
- ``"plain"``: ``blur/NAME`` and ``sharp/NAME``.

Random crops, flips and 90-degree rotations are drawn from a generator seeded by ``(seed, epoch, index)``, so a
sample is the same whatever the worker that loads it; call :meth:`set_epoch` between epochs for fresh crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import Dataset

from ..io import IMAGE_SUFFIXES, to_tensor

__all__ = ["ImagePair", "LAYOUTS", "find_pairs", "list_images", "random_geometry", "PhotoFolder", "PairedFolder"]

#: The paired layouts :func:`find_pairs` reads.
LAYOUTS = ("gopro", "reds", "plain")


@dataclass(frozen=True)
class ImagePair:
    """One sharp/blurry pair of a paired dataset; ``*_rel`` are relative to the dataset's root."""

    sharp: Path
    blurry: Path
    sharp_rel: PurePosixPath
    blurry_rel: PurePosixPath
    key: str


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (by suffix, see :data:`kernelspace.io.IMAGE_SUFFIXES`), sorted.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "b.png").write_bytes(b""); _ = (d / "a.txt").write_text("")
        >>> print(*[p.name for p in list_images(d)])
        b.png
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _match(root: Path, sharp_dir: Path, blur_dir: Path) -> list[ImagePair]:
    sharp = {p.name: p for p in list_images(sharp_dir)}
    blurry = {p.name: p for p in list_images(blur_dir)}
    if sharp.keys() != blurry.keys():
        missing = sorted(sharp.keys() ^ blurry.keys())
        raise ValueError(
            f"{blur_dir} and {sharp_dir} must hold images with the same names; unmatched: {missing[:5]}"
            + (" ..." if len(missing) > 5 else "")
        )
    pairs = []
    for name in sorted(sharp):
        s_rel = PurePosixPath(sharp[name].relative_to(root).as_posix())
        b_rel = PurePosixPath(blurry[name].relative_to(root).as_posix())
        # The key names the pair without the sharp/blurry folder: "SEQ/NAME", "train/SEQ/NAME" or "NAME".
        key = "/".join(part.removesuffix("_sharp") for part in s_rel.parts if part != "sharp")
        pairs.append(ImagePair(sharp[name], blurry[name], s_rel, b_rel, key))
    return pairs


def _pairs_in(root: Path, layout: str) -> list[ImagePair]:
    if layout == "plain":
        if (root / "blur").is_dir() and (root / "sharp").is_dir():
            return _match(root, root / "sharp", root / "blur")
        return []
    if layout == "gopro":
        seqs = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / "blur").is_dir() and (d / "sharp").is_dir()]
        return [pair for d in seqs for pair in _match(root, d / "sharp", d / "blur")]
    pairs = []  # reds
    for split in ("train", "val", "test"):
        blur_root, sharp_root = root / f"{split}_blur", root / f"{split}_sharp"
        if blur_root.is_dir() and sharp_root.is_dir():
            for seq in sorted(d for d in sharp_root.iterdir() if d.is_dir()):
                if not (blur_root / seq.name).is_dir():
                    raise ValueError(f"{seq} has no blurry twin folder {blur_root / seq.name}")
                pairs += _match(root, seq, blur_root / seq.name)
    return pairs


def find_pairs(root: str | os.PathLike, layout: str = "auto") -> tuple[str, list[ImagePair]]:
    """Find every sharp/blurry pair under ``root``; returns ``(layout, pairs)`` sorted by key.

    Args:
        root: the dataset's folder.
        layout: one of ``LAYOUTS`` (``gopro``, ``reds``, ``plain``), or ``"auto"`` to take the first layout that finds pairs.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: an unknown layout, no pairs in that layout, or sharp/blurry folders whose names do not match.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace.io import save_image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for side in ("blur", "sharp"):
        ...     _ = save_image(np.zeros((8, 8, 3), np.uint8), root / "seq1" / side / "000.png")
        >>> layout, pairs = find_pairs(root)
        >>> layout, pairs[0].key, str(pairs[0].blurry_rel)
        ('gopro', 'seq1/000.png', 'seq1/blur/000.png')
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; accepted: 'auto', " + ", ".join(repr(name) for name in LAYOUTS))
    for name in LAYOUTS if layout == "auto" else (layout,):
        pairs = _pairs_in(root, name)
        if pairs:
            return name, pairs
    expected = {
        "gopro": "SEQ/blur + SEQ/sharp", "reds": "train_blur/SEQ + train_sharp/SEQ", "plain": "blur/ + sharp/",
    }
    wanted = expected.values() if layout == "auto" else [expected[layout]]
    raise ValueError(f"no image pairs found in {root}; expected folders laid out as " + " or ".join(wanted))


def random_geometry(
    images: list[torch.Tensor], generator: torch.Generator, *, crop: int | None, flips: bool, rot90: bool
) -> list[torch.Tensor]:
    """The same random crop, flip and 90-degree rotation for each ``(C, H, W)`` tensor of ``images``.

    Images smaller than ``crop`` are reflect-padded up to it first (any photo size is accepted).

    Example:
        >>> import torch
        >>> x = torch.arange(2 * 5 * 6.).reshape(2, 5, 6)
        >>> a, b = random_geometry([x, x], torch.Generator().manual_seed(0), crop=4, flips=True, rot90=True)
        >>> tuple(a.shape), torch.equal(a, b)
        ((2, 4, 4), True)
    """
    h, w = images[0].shape[-2:]
    if crop is not None:
        if h < crop or w < crop:
            pad = (0, max(crop - w, 0), 0, max(crop - h, 0))
            mode = "reflect" if max(crop - w, crop - h) < min(h, w) else "replicate"
            images = [torch.nn.functional.pad(im[None], pad, mode=mode)[0] for im in images]
            h, w = images[0].shape[-2:]
        top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
        images = [im[..., top : top + crop, left : left + crop] for im in images]
    if flips and bool(torch.rand(1, generator=generator) < 0.5):
        images = [im.flip(-1) for im in images]
    if rot90:
        turns = int(torch.randint(0, 4, (1,), generator=generator))
        images = [torch.rot90(im, turns, (-2, -1)) for im in images]
    return [im.contiguous() for im in images]


def _read(path: Path) -> torch.Tensor:
    """The colour of an image file, upright, at its full depth (16-bit files too); any alpha is left out."""
    return to_tensor(path, name=str(path))[0][0]


class _RandomViews(Dataset):
    """Shared seeding of the two folder datasets: one generator per (seed, epoch, index)."""

    def __init__(self, crop: int | None, flips: bool, rot90: bool, seed: int) -> None:
        if crop is not None and (not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be a positive integer or None, got {crop!r}")
        self.crop, self.flips, self.rot90, self.seed, self.epoch = crop, flips, rot90, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh crops, flips and rotations for ``epoch`` (deterministic per epoch)."""
        self.epoch = int(epoch)

    def _views(self, index: int, images: list[torch.Tensor]) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & (2**63 - 1))
        return random_geometry(images, generator, crop=self.crop, flips=self.flips, rot90=self.rot90)


class PhotoFolder(_RandomViews):
    """Clean photos of a folder (recursively) as ``(3, crop, crop)`` float tensors in [0, 1].

    ``cache=True`` keeps every decoded photo in memory (8-bit, per process): worth it for a small set read
    many times, as when training on a few hundred photos.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace.io import save_image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save_image(np.zeros((20, 30, 3), np.uint8), root / "a.png")
        >>> tuple(PhotoFolder(root, crop=16)[0].shape)
        (3, 16, 16)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        crop: int | None = 256,
        *,
        flips: bool = True,
        rot90: bool = True,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        super().__init__(crop, flips, rot90, seed)
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.files = list_images(root, recursive=True)
        if not self.files:
            raise ValueError(f"no images found in {root}; accepted suffixes: {', '.join(IMAGE_SUFFIXES)}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.cache is None:
            return self._views(index, [_read(self.files[index])])[0]
        if index not in self.cache:
            self.cache[index] = (_read(self.files[index]) * 255).round().to(torch.uint8)
        return self._views(index, [self.cache[index].float() / 255])[0]


class PairedFolder(_RandomViews):
    """Sharp/blurry pairs (see :func:`find_pairs`) as dicts ``{"sharp", "blurry": (3, H, W) tensors, "key"}``.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace.io import save_image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for side in ("blur", "sharp"):
        ...     _ = save_image(np.zeros((20, 30, 3), np.uint8), root / side / "x.png")
        >>> item = PairedFolder(root, crop=16)[0]
        >>> item["key"], tuple(item["blurry"].shape), PairedFolder(root).layout
        ('x.png', (3, 16, 16), 'plain')
    """

    def __init__(
        self,
        root: str | os.PathLike,
        layout: str = "auto",
        crop: int | None = None,
        *,
        flips: bool = True,
        rot90: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(crop, flips, rot90, seed)
        self.layout, self.pairs = find_pairs(root, layout)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        pair = self.pairs[index]
        sharp, blurry = _read(pair.sharp), _read(pair.blurry)
        if sharp.shape != blurry.shape:
            raise ValueError(f"{pair.sharp} and {pair.blurry} differ in size: {tuple(sharp.shape)} vs {tuple(blurry.shape)}")
        sharp, blurry = self._views(index, [sharp, blurry])
        return {"sharp": sharp, "blurry": blurry, "key": pair.key}
