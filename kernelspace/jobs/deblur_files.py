"""The file-level deblurring job: image files and folders in, deblurred files out, resumable.

:func:`plan_outputs` decides where each input goes (never onto an input, never two files onto one path);
:func:`deblur_files` runs a configured :class:`~kernelspace.deblur.BlindDeblurrer` over them.

An output counts as done only when ``deblur_manifest.jsonl`` (in the output folder) lists it as written from
the same input bytes with the same settings (the deblurrer's options and the model's fingerprint), and the file
is still the one written. A file the manifest does not list is never replaced; one written with other settings
is replaced only with ``overwrite=True``. A file that cannot be read or deblurred is reported and the job goes on
(``skip_errors``). An image larger than one tile resumes tile by tile: finished tiles are kept in
``OUT/.kernelspace-tiles/`` until the image is written. The output folder is held by one run at a time and
every file is written inside it (:mod:`kernelspace.jobs.outputs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import safe_open
from tqdm.auto import tqdm

from ..data.folders import list_images
from ..deblur import BlindDeblurrer
from ..deblur.blind import TileResult
from ..files import safetensors_chunks
from ..io import DEFAULT_JPEG_QUALITY, IMAGE_SUFFIXES, image_metadata, load_image, to_tensor
from .outputs import (
    OutputFolder, append_line, compact_manifest, file_sha256, model_fingerprint, naming, read_manifest,
    recorded_files,
)

__all__ = ["deblur_files", "plan_outputs", "deblurrer_settings", "DeblurSummary", "MANIFEST_NAME"]

MANIFEST_NAME = "deblur_manifest.jsonl"
_TILES = ".kernelspace-tiles"


@dataclass(frozen=True)
class DeblurSummary:
    """What a :func:`deblur_files` run did."""

    written: int
    skipped: int  # done by an earlier run with the same settings
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, why) of the files that failed
    manifest: Path | None = None


def _single(sources: list[Path], out: Path) -> bool:
    """One input file and an output with an image suffix: the output is that file, not a folder."""
    return len(sources) == 1 and sources[0].is_file() and out.suffix.lower() in IMAGE_SUFFIXES


def plan_outputs(
    inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *, save_kernel: bool = False, show_kernel: bool = False
) -> list[tuple[Path, Path]]:
    """(input image, output path) for image files and folders (searched recursively) written under ``out``.

    A folder's images keep their paths relative to it; a file goes to ``out / name``, or to ``out`` itself when
    it is the only input and ``out`` has an image suffix. Refused (ValueError): ``out`` equal to or inside an
    input folder, an output path equal to an input file, and two files written to one path, counting the
    kernel files beside each output when ``save_kernel``/``show_kernel`` ask for them (``X.png`` and
    ``X.kernel.png`` side by side would collide).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "in").mkdir(); _ = (d / "in" / "a.png").write_bytes(b"")
        >>> for src, dst in plan_outputs([d / "in"], d / "out"):
        ...     print(src.relative_to(d), "->", dst.relative_to(d))
        in/a.png -> out/a.png
    """
    out = Path(out)
    sources = [Path(p) for p in inputs]
    if not sources:
        raise ValueError("no input given: pass image files and/or folders")
    single = _single(sources, out)
    jobs = []
    for src in sources:
        if src.is_dir():
            if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
                raise ValueError(f"the output {out} must lie outside the input folder {src} (inputs are never written to)")
            jobs += [(f, out / f.relative_to(src)) for f in list_images(src, recursive=True)]
        elif src.is_file():
            jobs.append((src, out if single else out / src.name))
        else:
            raise FileNotFoundError(f"input not found: {src}")
    inputs_resolved = {src.resolve() for src, _ in jobs}
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        for written in _written(dst, save_kernel, show_kernel):
            if written.resolve() in inputs_resolved:
                raise ValueError(f"the output {written} would overwrite an input; choose another output folder")
            if written.resolve() in seen:
                raise ValueError(f"{src} and {seen[written.resolve()]} would both be written to {written}; "
                                 "rename one of them or deblur them into separate folders")
            seen[written.resolve()] = src
    return jobs


def _kernel_files(dst: Path) -> tuple[Path, Path]:
    """Where ``--save-kernel`` and ``--show-kernel`` write beside the output ``dst``."""
    return dst.with_name(dst.stem + ".kernel.safetensors"), dst.with_name(dst.stem + ".kernel.png")


def _written(dst: Path, save_kernel: bool, show_kernel: bool) -> list[Path]:
    kernel_file, kernel_picture = _kernel_files(dst)
    return [dst] + [kernel_file] * save_kernel + [kernel_picture] * show_kernel


def deblurrer_settings(deblurrer: BlindDeblurrer) -> dict[str, Any]:
    """What decides a deblurred file: the deblurrer's options and its model's fingerprint (as JSON values)."""
    d = deblurrer
    known = None if d.known_psf is None else hashlib.sha256(d.known_psf.cpu().numpy().tobytes()).hexdigest()[:16]
    raw = {
        "preset": d.preset, "gamma": d.gamma, "psf_size": d.psf_size, "tile": d.tile, "overlap": d.overlap,
        "estimate_crop": d.estimate_crop, "max_sharpening": d.max_sharpening, "iterations": d.iterations,
        "x_warmup": d.x_warmup, "k_warmup": d.k_warmup, "seed": d.seed, "known_psf": known,
        "estimate_options": d.estimate_options, "deconvolve_options": d.deconvolve_options,
        "gradient_options": d.gradient_options,
        "model": {"architecture": d.model.architecture, "fingerprint": model_fingerprint(d.model)},
    }
    return json.loads(json.dumps(raw, sort_keys=True, default=repr))  # as it reads back from the manifest


class _TileStore(MutableMapping):
    """Finished tiles of one image on disk (``BlindDeblurrer(..., tiles=store)``), so that a large image resumes
    tile by tile; the folder's name is a hash of the settings, the input and the output."""

    def __init__(self, folder: OutputFolder, name: str) -> None:
        self.folder, self.path = folder, folder.root / _TILES / name

    def _file(self, index: int) -> Path:
        return self.path / f"{index}.safetensors"

    def __getitem__(self, index: int) -> TileResult:
        if not self._file(index).is_file():
            raise KeyError(index)
        with safe_open(str(self._file(index)), "pt") as f:
            if "psf" not in f.keys():  # a tile an older version wrote: computed again
                raise KeyError(index)
            tensors = [f.get_tensor(name) for name in ("restored", "kernel", "psf")]
            return TileResult(*tensors, f.metadata()["status"])

    def __setitem__(self, index: int, value: TileResult) -> None:
        tensors = {"restored": value.restored, "kernel": value.kernel, "psf": value.psf}
        self.folder.write(self._file(index), *safetensors_chunks(tensors, metadata={"status": value.status}))

    def __delitem__(self, index: int) -> None:
        self._file(index).unlink()

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(int(p.stem) for p in self.path.glob("*.safetensors")) if self.path.is_dir() else [])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def clear(self) -> None:
        shutil.rmtree(self.folder.confine(self.path), ignore_errors=True)


def _files_of(entry: dict) -> dict[str, str]:
    """The files a manifest entry says were written, relative path -> SHA-256."""
    return {entry["output"]: entry["output_sha256"], **entry.get("kernel_files", {})}


def deblur_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    deblurrer: BlindDeblurrer,
    *,
    save_kernel: bool = False,
    show_kernel: bool = False,
    overwrite: bool = False,
    skip_errors: bool = True,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    progress: bool = True,
) -> DeblurSummary:
    """Deblur image files and folders into ``out`` (see :func:`plan_outputs` and the module); resumable.

    Args:
        inputs: image files and folders.
        out: the output folder (or file, for one input file; the manifest then goes beside it).
        deblurrer: the configured :class:`BlindDeblurrer`.
        save_kernel: also write ``NAME.kernel.safetensors`` (the kernel under the key ``"kernel"``).
        show_kernel: also write ``NAME.kernel.png``, the blur map (:func:`kernelspace.render_kernel`) over the
            blurry input; needs a model with PSFs (KernelField).
        overwrite: redo outputs this job wrote with other settings or from other input bytes (without it they
            are refused). Files the job did not write are never replaced.
        skip_errors: a file that cannot be read or deblurred is listed in ``failed`` and the job goes on;
            ``False`` stops at the first one.
        jpeg_quality: quality of JPEG (and WebP) outputs, 1-100. Outputs keep their input's EXIF (upright) and
            ICC profile where the format holds them.
        progress: a progress bar over the files.

    Returns:
        A :class:`DeblurSummary`.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace import KernelField
        >>> from kernelspace.io import save_image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save_image((np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8), d / "in" / "a.png")
        >>> deblurrer = BlindDeblurrer(KernelField(cell=64, psf_size=9), progress=False)
        >>> summary = deblur_files([d / "in"], d / "out", deblurrer, progress=False)
        >>> summary.written, sorted(p.name for p in (d / "out").iterdir())
        (1, ['a.png', 'deblur_manifest.jsonl'])
        >>> deblur_files([d / "in"], d / "out", deblurrer, progress=False).skipped  # done: same input, settings
        1
    """
    if show_kernel and not deblurrer.has_psfs:
        raise ValueError(f"show_kernel needs a model with PSFs (KernelField); {type(deblurrer.model).__name__} has none")
    from ..viz import render_kernel

    out = Path(out).absolute()  # the folder's files are named both relative to it and by paths built from it
    jobs = plan_outputs(inputs, out, save_kernel=save_kernel, show_kernel=show_kernel)
    root = out.parent if _single([Path(p) for p in inputs], out) else out
    settings = {**deblurrer_settings(deblurrer), "jpeg_quality": jpeg_quality}
    failed: list[tuple[str, str]] = []
    with OutputFolder(root) as folder:
        manifest = folder.confine(root / MANIFEST_NAME)
        entries = read_manifest(manifest, repair=True)
        latest = {e["output"]: e for e in entries}
        recorded = recorded_files(entries, _files_of)

        todo, skipped, stale, tile_names = [], 0, [], set()
        for src, dst in jobs:
            rel = dst.relative_to(root).as_posix()
            wanted = {p.relative_to(root).as_posix(): p for p in _written(dst, save_kernel, show_kernel)}
            source_hash = file_sha256(src)
            entry = latest.get(rel)
            same = entry is not None and entry["settings"] == settings and entry["input_sha256"] == source_hash
            present = {r: file_sha256(p) for r, p in wanted.items() if p.is_file()}
            if same and all(present.get(r) == _files_of(entry).get(r) for r in wanted):
                skipped += 1
                continue
            for r, p in wanted.items():
                folder.confine(p)
                if (p.exists() or p.is_symlink()) and present.get(r) not in recorded.get(r, ()):
                    raise ValueError(
                        f"{p} exists and kernelspace deblur did not write it (it is not in {manifest}, or it changed "
                        "since); it is never replaced: move it away or choose another output folder"
                    )
            if entry is not None and not same and present:
                stale.append(dst)
            name = hashlib.sha256(json.dumps([settings, source_hash, rel], sort_keys=True).encode()).hexdigest()[:16]
            tile_names.add(name)
            todo.append((src, dst, rel, wanted, source_hash, name))
        if stale and not overwrite:
            raise ValueError(
                f"{len(stale)} output(s) in {root} were written with other settings or from other input files "
                f"(first: {stale[0]}); pass --overwrite (overwrite=True) to redo them, or use a new output folder"
            )
        tiles_root = folder.confine(root / _TILES)
        if tiles_root.is_dir():  # tiles of images whose settings or input changed since
            for stale_tiles in tiles_root.iterdir():
                if stale_tiles.name not in tile_names:
                    shutil.rmtree(folder.confine(stale_tiles), ignore_errors=True)

        written = 0
        with open(manifest, "ab") as log:
            for src, dst, rel, wanted, source_hash, name in tqdm(todo, unit="file", desc="files", disable=not progress):
                for path in wanted.values():
                    folder.remove_legacy_parts(path)
                try:
                    blurry = load_image(src)
                    store = _TileStore(folder, name) if max(to_tensor(blurry)[0].shape[-2:]) > deblurrer.tile else None
                    sharp, kernel = deblurrer(blurry, return_kernel=True, tiles=store)
                except (ValueError, Image.DecompressionBombError) as err:
                    if not skip_errors:
                        raise ValueError(f"{src}: {err}") from None
                    failed.append((str(src), str(err)))
                    continue
                kernel_file, kernel_picture = _kernel_files(dst)
                temps: dict[Path, Path] = {}
                if save_kernel:
                    temps[kernel_file] = folder.temp_path(kernel_file.name)
                    metadata = {"architecture": deblurrer.model.architecture}
                    with naming(kernel_file), open(temps[kernel_file], "wb") as f:
                        for chunk in safetensors_chunks({"kernel": kernel}, metadata):
                            f.write(chunk)
                if show_kernel:
                    temps[kernel_picture] = folder.save_image(render_kernel(kernel, deblurrer.model, image=blurry),
                                                              kernel_picture)
                meta = image_metadata(src)
                temps[dst] = folder.save_image(  # the image last
                    sharp, dst, quality=jpeg_quality, exif=meta.exif, icc_profile=meta.icc_profile
                )
                hashes = {p.relative_to(root).as_posix(): file_sha256(t) for p, t in temps.items()}
                append_line(log, {
                    "output": rel, "input": str(src), "input_sha256": source_hash, "output_sha256": hashes.pop(rel),
                    "kernel_files": hashes, "settings": settings,
                })
                # Listed first, placed second: a kill in between leaves listed files (redone), never unlisted ones.
                for path, tmp in temps.items():
                    folder.place(tmp, path)
                if store is not None:
                    store.clear()
                written += 1
        compact_manifest(folder, manifest, _files_of)
        try:
            tiles_root.rmdir()
        except OSError:
            pass
    return DeblurSummary(written, skipped, failed, manifest)

