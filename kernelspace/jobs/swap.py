"""Blur-swapped datasets: every sharp image of a paired dataset gets a synthetic blurry twin.

:func:`swap_dataset` reads a paired dataset (GoPro, REDS or plain ``blur/`` + ``sharp/``, see
:func:`kernelspace.data.folders.find_pairs`) and writes the same layout to a new folder: the sharp images copied
(or hard-linked), each blurry image replaced by the sharp image blurred with

- ``source="pairs"``: the kernel of a real pair of the same dataset (one of ``pairs`` source pairs chosen from the
  seed, never the image's own pair when there is another), extracted once per source pair from a centre crop of
  ``extract_crop`` pixels (cropping, unlike downscaling, keeps the blur's length in pixels; kernel extraction
  costs seconds per pair, so a crop keeps it affordable) and stretched over the target by the model;
- ``source="prior"``: a kernel drawn from the model's prior;
- ``source="both"``: either, half and half.

Every choice is a function of ``seed`` and the pair's key alone, so a run is the same whatever the order, the
sharding or the interruptions. Each written file gets a line in a JSONL manifest (``swap_manifest.jsonl``, or
``swap_manifest.shard-I-of-N.jsonl``): the sharp input and its SHA-256, the output and its SHA-256, the kernel's
origin (source pair and crop, or prior seed) and the settings (with the model's fingerprint and the source
pairs' hashes), enough to regenerate it. A run that is started again skips the outputs its manifests list with
the same settings, the same input and the same bytes, and refuses a folder holding outputs made with other
settings or files it did not write. The output folder is held by one run (or one run per shard) at a time, and
every file is written inside it (see :mod:`kernelspace.jobs.outputs`); the input folder is only read.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.folders import ImagePair, find_pairs
from ..device import DeviceLike
from ..hub import load_model
from ..io import DEFAULT_JPEG_QUALITY, load_image, to_tensor
from ..models import KernelSpaceModel
from ..synthesis import ModelLike
from .outputs import (
    OutputFolder, append_line, compact_manifest, file_sha256, model_fingerprint, read_manifest, recorded_files,
)

__all__ = ["swap_dataset", "parse_shard", "SwapSummary", "SOURCES"]

#: Where the kernels of a blur-swapped dataset come from.
SOURCES = ("pairs", "prior", "both")
_MANIFEST = "swap_manifest"


@dataclass(frozen=True)
class SwapSummary:
    """What a :func:`swap_dataset` run did."""

    layout: str
    total: int  # pairs in this shard
    written: int
    skipped: int  # already finished by an earlier run
    manifest: Path
    sources: int = 0  # real pairs used as blur sources
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sharp input, why) of pairs that failed


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``, with ``0 <= i < n``.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def _draw(seed: int, key: str) -> int:
    """A 64-bit number from (seed, key): each output's choices, independent of order and sharding."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


def _check_folders(input_root: Path, output_root: Path) -> None:
    inp, out = input_root.resolve(), output_root.resolve()
    if out == inp or out.is_relative_to(inp) or inp.is_relative_to(out):
        raise ValueError(
            f"the output folder {out} must lie outside the input folder {inp} and not contain it "
            "(the input dataset is never written to)"
        )


def _centre_crop(image: Any, side: int) -> tuple[Any, list[int]]:
    array = isinstance(image, np.ndarray)  # 16-bit colour files load as arrays, the rest as PIL images
    height, width = image.shape[:2] if array else image.size[::-1]
    h, w = (height, width) if side <= 0 else (min(side, height), min(side, width))
    top, left = (height - h) // 2, (width - w) // 2
    crop = image[top : top + h, left : left + w] if array else image.crop((left, top, left + w, top + h))
    return crop, [top, left, h, w]


def _place_copy(folder: OutputFolder, src: Path, dst: Path, link: bool) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where asked and possible, else a copy."""
    tmp = folder.temp_path(dst.name)
    try:
        if not link:
            raise OSError("a copy was asked for")
        os.link(src, tmp)
    except OSError:  # a copy asked for, another file system, or links not allowed
        shutil.copyfile(src, tmp)
    folder.place(tmp, dst)


def _files_of(entry: dict) -> dict[str, str]:
    """The file a manifest entry says was written: relative path -> SHA-256."""
    return {entry["output"]: entry.get("output_sha256", "")}


def _check_not_foreign(root: Path, rel: Any, sha256: set[str], what: str) -> None:
    """Refuse to replace ``root / rel`` when it exists with bytes other than ``sha256`` (what this job wrote)."""
    path = root / rel
    if (path.exists() or path.is_symlink()) and (not path.is_file() or file_sha256(path) not in sha256):
        raise ValueError(
            f"{path} exists and is not {what}; kernelspace swap only replaces files it wrote: "
            "move it away or choose another output folder"
        )


class _Kernels:
    """The kernel of each output: extracted once per source pair (cached) or drawn from the prior."""

    def __init__(self, model: KernelSpaceModel, sources: list[ImagePair], extract_crop: int) -> None:
        self.model, self.sources, self.extract_crop = model, sources, extract_crop
        self._extracted: dict[str, tuple[torch.Tensor, list[int]]] = {}
        self._unreadable: dict[str, str] = {}  # source pairs that could not be read: their outputs fail with this

    def origin(self, pair: ImagePair, mode: str, seed: int) -> dict[str, Any]:
        """Where ``pair``'s kernel comes from, as recorded in the manifest."""
        draw = _draw(seed, pair.key)
        if mode == "prior" or (mode == "both" and draw & 1):
            return {"kind": "prior", "seed": (draw >> 1) & (2**62 - 1)}
        index = (draw >> 1) % len(self.sources)
        if self.sources[index].key == pair.key and len(self.sources) > 1:
            index = (index + 1) % len(self.sources)
        src = self.sources[index]
        return {"kind": "pair", "key": src.key, "sharp": str(src.sharp_rel), "blurry": str(src.blurry_rel)}

    def extract(self, keys: set[str], batch: int, bar: Any) -> None:
        """Extract the kernels of the source pairs ``keys`` not extracted yet, ``batch`` same-sized crops per call
        of the model (a pair's kernel does not depend on the others in its batch beyond float rounding). Crops
        are read as their batch fills: at most ``batch`` of each size are held at once."""
        pending: dict[tuple[int, ...], list[tuple[str, torch.Tensor, torch.Tensor, list[int]]]] = {}
        for src in self.sources:
            if src.key in keys and src.key not in self._extracted:
                try:
                    sharp, box = _centre_crop(load_image(src.sharp), self.extract_crop)
                    blurry, _ = _centre_crop(load_image(src.blurry), self.extract_crop)
                except (ValueError, Image.DecompressionBombError) as err:
                    self._unreadable[src.key] = f"its blur source {src.blurry}: {err}"
                    bar.update(1)
                    continue
                x, y = to_tensor(sharp)[0], to_tensor(blurry)[0]
                group = pending.setdefault((*x.shape, *y.shape), [])
                group.append((src.key, x, y, box))
                if len(group) == batch:
                    self._extract_group(group, bar)
        for group in pending.values():
            self._extract_group(group, bar)

    def _extract_group(self, group: list[tuple[str, torch.Tensor, torch.Tensor, list[int]]], bar: Any) -> None:
        """One call of the model for these same-sized crops; empties ``group``."""
        if group:
            kernels = self.model.extract_kernel(torch.cat([x for _, x, _, _ in group]),
                                                torch.cat([y for _, _, y, _ in group]))
            for (key, _, _, box), kernel in zip(group, kernels):
                self._extracted[key] = kernel[None], box
            bar.update(len(group))
            group.clear()

    def kernel(self, origin: dict[str, Any], height: int, width: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if origin["kind"] == "prior":
            generator = torch.Generator().manual_seed(origin["seed"])  # CPU: the same kernel on any device
            return self.model.sample_kernel(height, width, generator=generator), origin
        if origin["key"] in self._unreadable:
            raise ValueError(self._unreadable[origin["key"]])
        kernel, box = self._extracted[origin["key"]]
        return kernel, {**origin, "crop": box}


def swap_dataset(
    input_root: str | os.PathLike,
    output_root: str | os.PathLike,
    *,
    layout: str = "auto",
    source: str = "pairs",
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    model: ModelLike = None,
    device: DeviceLike = "auto",
    pairs: int = 8,
    extract_crop: int = 256,
    link: bool = False,
    skip_errors: bool = True,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    batch: int = 8,
    progress: bool = True,
) -> SwapSummary:
    """Write a blur-swapped copy of the paired dataset at ``input_root`` to ``output_root``; resumable.

    Args:
        input_root: the paired dataset (read only).
        output_root: where the same layout is written; must not lie inside ``input_root`` nor contain it.
        layout: ``"auto"``, ``"gopro"``, ``"reds"`` or ``"plain"``
            (see :func:`~kernelspace.data.folders.find_pairs`).
        source: ``"pairs"`` (kernels of real pairs of the dataset), ``"prior"`` or ``"both"``.
        seed: decides the source pairs and every output's kernel.
        shard: ``(i, n)``: this run writes the pairs whose index in the sorted list is ``i`` modulo ``n``.
        model: the kernel-space model, or anything :func:`~kernelspace.load_model` accepts (``None``: the default).
        device: where the model runs.
        pairs: how many real pairs serve as blur sources.
        extract_crop: side of the centre crop kernels are extracted from (``0``: the whole image).
        link: hard-link the sharp images instead of copying them (falls back to a copy where links fail).
        skip_errors: a pair whose image cannot be read or blurred is reported in ``failed`` and the run goes
            on; ``False`` stops at the first one.
        jpeg_quality: quality of JPEG (and WebP) blurry outputs, 1-100.
        batch: source pairs whose kernels are extracted in one call of the model (same-sized crops).
        progress: show progress bars (the source pairs' extraction, then the outputs, in pairs per second).

    Returns:
        A :class:`SwapSummary`. A dataset with fewer than ``pairs`` pairs uses all of them as sources (a
        warning says so; the manifest and ``SwapSummary.sources`` give the number used).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace.io import save_image
        >>> from kernelspace.models import KernelField
        >>> data, out = pathlib.Path(tempfile.mkdtemp()), pathlib.Path(tempfile.mkdtemp()) / "swapped"
        >>> for side in ("blur", "sharp"):
        ...     _ = save_image(np.full((40, 40, 3), 128, np.uint8), data / "seq1" / side / "000.png")
        >>> summary = swap_dataset(data, out, source="prior", model=KernelField(cell=32, psf_size=7), progress=False)
        >>> summary.layout, summary.written, sorted(p.name for p in (out / "seq1").iterdir())
        ('gopro', 1, ['blur', 'sharp'])
    """
    # Absolute: the folder's files are named both relative to it and by paths built from it.
    input_root, output_root = Path(input_root), Path(output_root).absolute()
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    shard_index, shard_count = parse_shard(f"{shard[0]}/{shard[1]}")
    for name, value, low in (("pairs", pairs, 1), ("extract_crop", extract_crop, 0), ("batch", batch, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    _check_folders(input_root, output_root)
    layout, all_pairs = find_pairs(input_root, layout)
    net = model if isinstance(model, KernelSpaceModel) else load_model(model, device=device)
    net.eval()
    chosen = sorted(random.Random(seed).sample(range(len(all_pairs)), min(pairs, len(all_pairs))))
    if pairs > len(all_pairs) and source != "prior":
        warnings.warn(f"{input_root} has {len(all_pairs)} pairs, fewer than pairs={pairs}: all {len(chosen)} serve "
                      "as blur sources (the manifest records that number)", stacklevel=2)
    sources = [all_pairs[i] for i in chosen]
    kernels = _Kernels(net, sources, extract_crop)
    # What decides the outputs; a resumed run must match it. The model counts by its weights, not by its path,
    # and the source pairs by their bytes.
    settings = {
        "layout": layout, "source": source, "seed": seed, "pairs": len(chosen), "extract_crop": extract_crop,
        "jpeg_quality": jpeg_quality, "model": {"architecture": net.architecture, "fingerprint": model_fingerprint(net)},
    }
    if source != "prior":
        settings["sources"] = {p.key: hashlib.sha256((file_sha256(p.sharp) + file_sha256(p.blurry)).encode()).hexdigest()[:16]
                               for p in sources}
    model_source = "default" if model is None else "object" if isinstance(model, KernelSpaceModel) else str(model)

    suffix = "" if shard_count == 1 else f".shard-{shard_index}-of-{shard_count}"
    manifest = output_root / f"{_MANIFEST}{suffix}.jsonl"
    mine = [p for i, p in enumerate(all_pairs) if i % shard_count == shard_index]
    failed: list[tuple[str, str]] = []
    with OutputFolder(output_root, shard=(shard_index, shard_count)) as folder:
        entries = []  # over every shard's manifest
        for path in sorted(output_root.glob(f"{_MANIFEST}*.jsonl")):
            entries += read_manifest(folder.confine(path), repair=path == manifest)
        for entry in entries:
            if entry.get("settings") != settings:
                raise ValueError(
                    f"{output_root} holds outputs made with other settings ({entry.get('settings')}); "
                    "give the same options to resume, or use a new output folder"
                )
        latest = {e["output"]: e for e in entries}
        recorded = recorded_files(entries, _files_of)
        todo, sharp_hashes = [], {}
        for pair in mine:
            sharp_hashes[pair.key] = file_sha256(pair.sharp)
            entry = latest.get(str(pair.blurry_rel))
            out = output_root / pair.blurry_rel
            if entry and entry.get("sharp_sha256") == sharp_hashes[pair.key] and out.is_file() \
                    and file_sha256(out) == entry.get("output_sha256"):
                continue
            # Inside the output folder once links are resolved, and what is there may be replaced only if this job
            # wrote it: a copy of the sharp input, a listed output.
            for rel in (pair.sharp_rel, pair.blurry_rel):
                folder.confine(rel)
            _check_not_foreign(output_root, pair.sharp_rel, {sharp_hashes[pair.key]}, f"a copy of {pair.sharp}")
            _check_not_foreign(output_root, pair.blurry_rel, recorded.get(str(pair.blurry_rel), set()),
                               "an output listed in a manifest")
            todo.append(pair)
        origins = {pair.key: kernels.origin(pair, source, seed) for pair in todo}
        needed = {o["key"] for o in origins.values() if o["kind"] == "pair"}
        with tqdm(total=len(needed), desc="extract", unit="pair", disable=not progress or not needed) as bar:
            kernels.extract(needed, batch, bar)
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="swap", unit="pair", disable=not progress)
        with open(folder.confine(manifest), "ab") as log:
            for pair in todo:
                for rel in (pair.sharp_rel, pair.blurry_rel):
                    folder.remove_legacy_parts(folder.confine(rel))
                try:
                    sharp = load_image(pair.sharp)
                    kernel, origin = kernels.kernel(origins[pair.key], *to_tensor(sharp)[0].shape[-2:])
                    blurry = net.apply_kernel(sharp, kernel)
                except (ValueError, Image.DecompressionBombError) as err:
                    if not skip_errors:
                        raise
                    failed.append((str(pair.sharp), str(err)))
                    bar.update(1)
                    continue
                _place_copy(folder, pair.sharp, folder.confine(pair.sharp_rel), link)
                tmp = folder.save_image(blurry, folder.confine(pair.blurry_rel), quality=jpeg_quality)
                entry = {
                    "output": str(pair.blurry_rel), "sharp": str(pair.sharp_rel), "key": pair.key, "kernel": origin,
                    "settings": settings, "model_source": model_source, "sharp_sha256": sharp_hashes[pair.key],
                    "output_sha256": file_sha256(tmp),
                }
                # Listed first, placed second: a kill in between leaves a listed output that is missing (redone
                # on resume), never an unlisted one, which would look like a file the job did not write.
                append_line(log, entry)
                folder.place(tmp, pair.blurry_rel)
                bar.update(1)
        bar.close()
        compact_manifest(folder, manifest, _files_of)
    written = len(todo) - len(failed)
    return SwapSummary(layout, len(mine), written, len(mine) - len(todo), manifest, len(chosen), failed)

