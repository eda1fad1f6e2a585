"""The file-level deblurring job: image files and folders in, deblurred files out, resumable.

:func:`plan_outputs` decides where each input goes (never onto an input); :func:`deblur_files` runs a
configured :class:`~kernelspace.deblur.BlindDeblurrer` over them, writing atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data.folders import list_images
from ..deblur import BlindDeblurrer
from ..io import IMAGE_SUFFIXES, load_image, save_image

__all__ = ["deblur_files", "plan_outputs"]


def plan_outputs(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(input image, output path) for image files and folders (searched recursively) written under ``out``.

    A folder's images keep their paths relative to it; a file goes to ``out / name``, or to ``out`` itself when
    it is the only input and ``out`` has an image suffix. Refused (ValueError): ``out`` equal to or inside an
    input folder, an output path equal to an input file, and two inputs with the same output path.

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
    single = len(sources) == 1 and sources[0].is_file() and out.suffix.lower() in IMAGE_SUFFIXES
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
        for written in (dst, *_kernel_files(dst)):
            if written.resolve() in inputs_resolved:
                raise ValueError(f"the output {written} would overwrite an input; choose another output folder")
        if dst.resolve() in seen:
            raise ValueError(f"{src} and {seen[dst.resolve()]} would both be written to {dst}")
        seen[dst.resolve()] = src
    return jobs


def _kernel_files(dst: Path) -> tuple[Path, Path]:
    """Where ``--save-kernel`` and ``--show-kernel`` write beside the output ``dst``."""
    return dst.with_name(dst.stem + ".kernel.safetensors"), dst.with_name(dst.stem + ".kernel.png")


def deblur_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    deblurrer: BlindDeblurrer,
    *,
    save_kernel: bool = False,
    show_kernel: bool = False,
    progress: bool = True,
) -> tuple[int, int]:
    """Deblur image files and folders into ``out`` (see :func:`plan_outputs`); resumable.

    Outputs that exist (with their kernel files, when asked for) are skipped, so running again after an
    interruption finishes the job. Every file is written atomically, the image last.

    Args:
        inputs: image files and folders.
        out: the output folder (or file, for one input file).
        deblurrer: the configured :class:`BlindDeblurrer`.
        save_kernel: also write ``NAME.kernel.safetensors`` (the kernel under the key ``"kernel"``).
        show_kernel: also write ``NAME.kernel.png``, the blur map (:func:`kernelspace.render_kernel`) over the
            blurry input; needs a model with PSFs (KernelField).
        progress: a progress bar over the files.

    Returns:
        (files written, files skipped because they were done).
    """
    if show_kernel and not deblurrer.has_psfs:
        raise ValueError(f"show_kernel needs a model with PSFs (KernelField); {type(deblurrer.model).__name__} has none")
    from ..viz import render_kernel

    jobs = plan_outputs(inputs, out)
    written = skipped = 0
    for src, dst in tqdm(jobs, unit="file", desc="files", disable=not progress):
        kernel_file, kernel_picture = _kernel_files(dst)
        wanted = [dst] + [kernel_file] * save_kernel + [kernel_picture] * show_kernel
        if all(p.exists() for p in wanted):
            skipped += 1
            continue
        blurry = load_image(src)
        sharp, kernel = deblurrer(blurry, return_kernel=True)
        if save_kernel:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = kernel_file.with_name(f".{kernel_file.name}.part")
            save_file({"kernel": kernel.contiguous()}, str(tmp), metadata={"architecture": deblurrer.model.architecture})
            os.replace(tmp, kernel_file)
        if show_kernel:
            save_image(render_kernel(kernel, deblurrer.model, image=blurry), kernel_picture)
        save_image(sharp, dst)
        written += 1
    return written, skipped
