"""The ``kernelspace`` command line: one sub-command per capability (``info``, ``convert``, ``train``, ...).

Every error ends the command with one line on stderr, ``kernelspace COMMAND: error: ...``, naming the file and
what to do (:func:`main` maps exceptions to it); the exit statuses are in :data:`EXIT_STATUSES`.
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import sys
import warnings
from collections.abc import Sequence

from PIL import Image
from safetensors import SafetensorError

from . import __version__
from .io import DEFAULT_JPEG_QUALITY
from .hub import DEFAULT_MODEL_DIR, ModelNotFoundError, convert_checkpoint
from .jobs.outputs import FolderInUse
from .models import ARCHITECTURES

#: What each exit status of ``kernelspace`` means (docs/cli.md has the same table).
EXIT_STATUSES = {
    0: "success",
    1: "a folder job finished, but some input files failed (each named on stderr); the rest are written",
    2: "an error, reported on stderr as one line `kernelspace COMMAND: error: ...`, or invalid arguments",
    3: "an unexpected internal error (a bug), also reported as one line",
    130: "interrupted (Ctrl-C); finished work is kept, and running the same command again resumes",
}


def _info(args: argparse.Namespace) -> int:
    import huggingface_hub
    import kornia
    import numpy
    import torch

    from .device import resolve_device

    print(f"kernelspace {__version__}")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    for mod in (torch, numpy, kornia, huggingface_hub):
        print(f"{mod.__name__} {mod.__version__}")
    cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
    print(f"device: auto -> {resolve_device('auto')} ({cuda}; {torch.get_num_threads()} CPU threads)")
    print("architectures: " + ", ".join(f"{name} ({cls.__name__})" for name, cls in sorted(ARCHITECTURES.items())))
    shipped = "yes" if (DEFAULT_MODEL_DIR / "config.json").is_file() else "not shipped in this version"
    print(f"default model: {shipped}")
    print("loads: a folder (config.json + model.safetensors), a .safetensors file, a published .pth checkpoint, "
          "a Hugging Face Hub repo id")
    return 0


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected to a log file they would leave escape codes there."""
    return not args.no_progress and sys.stderr.isatty()


def _report_failures(command: str, failed: list[tuple[str, str]]) -> int:
    for path, why in failed:
        print(_one_line(f"kernelspace {command}: error: {path}: {why}"), file=sys.stderr)
    if failed:
        print(f"kernelspace {command}: {len(failed)} input file(s) failed (listed above); fix or remove them and run "
              "the same command again to finish", file=sys.stderr)
    return 1 if failed else 0


def _convert(args: argparse.Namespace) -> int:
    convert_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    print(f"wrote {args.out_dir} (config.json, model.safetensors, README.md)")  # the folder as the user named it
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from .training import TrainConfig, model_for_run, train

    def as_json(text: str, option: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{option} must be a JSON object such as '{{\"latent_dim\": 64}}' ({err})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{option} must be a JSON object, got {text!r}")
        return value

    model = model_for_run(args.out, args.model, as_json(args.model_config, "--model-config"), seed=args.seed,
                          overwrite=args.overwrite)
    config = TrainConfig(
        data=args.data, out=args.out, paired=args.paired, crop=args.crop, batch_size=args.batch_size, lr=args.lr,
        max_steps=args.max_steps, seed=args.seed, device=args.device, workers=args.workers,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, blur=as_json(args.blur, "--blur"),
        model=args.model, objective=args.objective,
    )
    train(model, config, progress=_progress(args), overwrite=args.overwrite)
    print(f"wrote {args.out}/model (load it with kernelspace.load_model({str(args.out) + '/model'!r}))")
    return 0


def _swap(args: argparse.Namespace) -> int:
    from .jobs.swap import parse_shard, swap_dataset

    summary = swap_dataset(
        args.input, args.output, layout=args.layout, source=args.source, seed=args.seed,
        shard=parse_shard(args.shard), model=args.model, device=args.device, pairs=args.pairs,
        extract_crop=args.extract_crop, link=args.link, skip_errors=args.skip_errors, jpeg_quality=args.jpeg_quality,
        batch=args.batch, progress=_progress(args),
    )
    sources = f", blur from {summary.sources} source pair(s)" if args.source != "prior" else ""
    print(f"{summary.layout} layout: wrote {summary.written}, {summary.skipped} already done, "
          f"{summary.total} in this shard{sources}; manifest {summary.manifest}")
    return _report_failures("swap", summary.failed)


def _deblur(args: argparse.Namespace) -> int:
    from .deblur import BlindDeblurrer
    from .jobs.deblur_files import deblur_files

    deblurrer = BlindDeblurrer(
        args.model, args.preset, args.device, gamma=args.gamma, tile=args.tile, psf_size=args.psf_size,
        max_sharpening=args.max_sharpening or None,  # 0: no guard
        progress=_progress(args),
    )
    summary = deblur_files(
        args.inputs, args.out, deblurrer, save_kernel=args.save_kernel, show_kernel=args.show_kernel,
        overwrite=args.overwrite, skip_errors=args.skip_errors, jpeg_quality=args.jpeg_quality, progress=_progress(args),
    )
    print(f"wrote {summary.written} image(s) to {args.out}, {summary.skipped} already done")
    return _report_failures("deblur", summary.failed)


def _run_options(command: argparse.ArgumentParser) -> None:
    """The options every long-running command shares: where to run, and whether to show progress."""
    command.add_argument("--device", default="auto", help="auto, cpu or cuda[:n] (default auto)")
    command.add_argument("--no-progress", action="store_true",
                         help="no progress bar (there is none either when stderr is not a terminal)")


def _folder_job_options(command: argparse.ArgumentParser) -> None:
    """What a folder job does with an input file it cannot read or process."""
    command.add_argument("--skip-errors", action=argparse.BooleanOptionalAction, default=True,
                         help="go on past an input that cannot be read or processed, list the failures at the end "
                         "and exit with status 1 (default); --no-skip-errors stops at the first")
    command.add_argument("--jpeg-quality", type=_jpeg_quality, default=DEFAULT_JPEG_QUALITY, metavar="Q",
                         help=f"quality of JPEG and WebP outputs, 1-100 (default {DEFAULT_JPEG_QUALITY})")


def _jpeg_quality(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelspace", description="Blur kernel spaces: extract, transfer, sample and remove blur."
    )
    parser.add_argument("--version", action="version", version=f"kernelspace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="versions, device, and the models this install can load").set_defaults(func=_info)
    convert = sub.add_parser(
        "convert", help="turn a published checkpoint (.pth) into a folder with config.json + model.safetensors"
    )
    convert.add_argument("checkpoint", help="the published checkpoint, e.g. GOPRO_wVAE.pth")
    convert.add_argument("out_dir", help="the folder to write (must not exist unless --overwrite)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace OUT_DIR if it is a model folder (config.json, model.safetensors, README.md)")
    convert.set_defaults(func=_convert)

    from .training import TrainConfig

    defaults = TrainConfig("", "")
    train = sub.add_parser(
        "train", help="train a kernel-space model on clean photos (synthetic blur) or a paired dataset; resumable",
        description="Train, or resume (run the same command again), a kernel-space model; see kernelspace.training.",
    )
    train.add_argument("data", help="a folder of clean photos, or a paired dataset (GOPRO, REDS or blur/ + sharp/)")
    train.add_argument("out", help="the run folder: checkpoint.pt, log.jsonl and the final model/")
    train.add_argument("--model", default="kernel-field",
                       help="an architecture to train from scratch (kernel-field, bks) or a model source to fine-tune")
    train.add_argument("--model-config", default="{}",
                       help="JSON constructor arguments of a new model (a kernel-field trains a latent_dim of 64 "
                       "unless this says otherwise), or changes to a loaded one's config (its weights kept, new "
                       "parts such as {\"encoder_width\": 16} start fresh)")
    train.add_argument("--objective", default=None,
                       help="what to train: kernel-field 'prior' (its kernel space, the default) or 'extractor' "
                       "(its learned extractor: give a model with encoder_width > 0); bks 'joint'")
    kind = train.add_mutually_exclusive_group()
    kind.add_argument("--paired", dest="paired", action="store_true", default=None, help="DATA is a paired dataset")
    kind.add_argument("--photos", dest="paired", action="store_false", help="DATA is clean photos (synthetic blur)")
    for name, kind_of in (("crop", int), ("batch-size", int), ("lr", float), ("max-steps", int), ("seed", int),
                          ("workers", int), ("checkpoint-every", int), ("log-every", int)):
        train.add_argument(f"--{name}", type=kind_of, default=getattr(defaults, name.replace("-", "_")),
                           help=f"(default {getattr(defaults, name.replace('-', '_'))})")
    train.add_argument("--blur", default="{}", help="JSON keyword arguments of the SyntheticBlur used on photos")
    train.add_argument("--overwrite", action="store_true",
                       help="start again: delete OUT's checkpoint, log and model (nothing else) instead of resuming")
    _run_options(train)
    train.set_defaults(func=_train)

    swap = sub.add_parser(
        "swap", help="write a paired dataset's twin whose blurry images are synthetic (real blurs moved); resumable",
        description="Blur-swap a paired dataset: same layout out, each blurry image replaced by its sharp image "
        "blurred with a kernel from a real pair of the dataset or the model's prior; a JSONL manifest records how "
        "each file was made. Run the same command again to resume.",
    )
    swap.add_argument("input", help="the paired dataset (GOPRO, REDS or blur/ + sharp/); only read")
    swap.add_argument("output", help="the folder to write (outside INPUT)")
    swap.add_argument("--layout", default="auto", choices=["auto", "gopro", "reds", "plain"])
    swap.add_argument("--source", default="pairs", choices=["pairs", "prior", "both"],
                      help="kernels from real pairs of the dataset, the model's prior, or both (default pairs)")
    swap.add_argument("--seed", type=int, default=0, help="decides the source pairs and every kernel (default 0)")
    swap.add_argument("--shard", default="0/1", help="i/n: write only every n-th pair, starting at the i-th")
    swap.add_argument("--pairs", type=int, default=8, help="number of real pairs used as blur sources (default 8)")
    swap.add_argument("--extract-crop", type=int, default=256,
                      help="side of the centre crop kernels are extracted from; 0 = whole image (default 256)")
    swap.add_argument("--link", action="store_true", help="hard-link the sharp images instead of copying them")
    swap.add_argument("--batch", type=int, default=8,
                      help="source pairs whose kernels are extracted in one call of the model (default 8)")
    swap.add_argument("--model", default=None, help="model source (folder, file, Hub id); default: the shipped model")
    _folder_job_options(swap)
    _run_options(swap)
    swap.set_defaults(func=_swap)

    deblur = sub.add_parser(
        "deblur", help="deblur image files and folders without knowing the blur; resumable",
        description="Blind deblurring (see kernelspace.deblur.BlindDeblurrer): each input image is written under OUT "
        "with its name (folders keep their layout). Finished outputs are skipped, so running again resumes; inputs "
        "are never overwritten.",
    )
    deblur.add_argument("inputs", nargs="+", metavar="IN", help="image files and/or folders (searched recursively)")
    deblur.add_argument("-o", "--out", required=True,
                        help="output folder (or output file, for a single input file); not inside an input folder")
    deblur.add_argument("--preset", default="fast", choices=["fast", "paper"],
                        help="fast: PSF estimate + deconvolution (default); paper: deep image prior + kernel space (slow)")
    deblur.add_argument("--gamma", type=float, default=1.0,
                        help="camera response exponent to deblur in (default 1.0: the encoded values; 2.2: linear light)")
    deblur.add_argument("--tile", type=int, default=512, help="tile side for large images (default 512)")
    deblur.add_argument("--psf-size", type=int, default=None, help="longest blur looked for, odd (default: the model's)")
    from .deblur.blind import DEFAULT_MAX_SHARPENING

    deblur.add_argument("--max-sharpening", type=float, default=DEFAULT_MAX_SHARPENING,
                        help="re-estimate, or else keep blurry, a tile whose deblurring raises its total variation "
                        f"more than this factor (a wrong kernel's ringing; default {DEFAULT_MAX_SHARPENING}; 0: no guard)")
    deblur.add_argument("--save-kernel", action="store_true", help="also write NAME.kernel.safetensors (the kernel k)")
    deblur.add_argument("--show-kernel", action="store_true", help="also write NAME.kernel.png (the blur map)")
    deblur.add_argument("--model", default=None, help="model source (folder, file, Hub id); default: the shipped model")
    deblur.add_argument("--overwrite", action="store_true",
                        help="redo outputs written with other settings or from changed inputs (files kernelspace did "
                        "not write are never replaced)")
    _folder_job_options(deblur)
    _run_options(deblur)
    deblur.set_defaults(func=_deblur)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: What to do about an operating-system error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and run the same command again (finished files are kept)",
    errno.EDQUOT: "the disk quota is used up: free some space and run the same command again (finished files are kept)",
    errno.EROFS: "the file system is read-only: choose a folder you can write to",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write to, or fix its permissions",
    errno.EFBIG: "the file is larger than this process may write (see ulimit -f) or the file system allows",
    errno.EISDIR: "a folder is where a file was expected: give a file",
    errno.ENOTDIR: "a file is where a folder was expected: give a folder",
}


def _error_message(err: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception a command raised."""
    if isinstance(err, (ValueError, TypeError, FileNotFoundError, FileExistsError, ModelNotFoundError, FolderInUse)):
        return str(err), 2
    if isinstance(err, Image.DecompressionBombError):
        return f"{err} (an image this large is refused: resize it first)", 2
    if isinstance(err, SafetensorError):
        return f"not a readable safetensors file ({err}); download or write it again", 2
    if isinstance(err, OSError):
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
        advice = _OS_ADVICE.get(err.errno, "fix that and run the same command again")
        return f"{where}: {err.strerror or err}; {advice}", 2
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and (
            "out of memory" in str(err) or "can't allocate memory" in str(err) or "not enough memory" in str(err))):
        return ("not enough memory for this ({}); try a smaller --tile, --batch-size or --crop, smaller images, or "
                "another --device".format(str(err).splitlines()[0][:120] if str(err) else type(err).__name__)), 2
    return (f"internal error ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); this is a bug: "
            "please report it with the command (KERNELSPACE_TRACEBACK=1 prints the traceback)"), 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kernelspace ARGS``; returns the exit status (see :data:`EXIT_STATUSES`)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            print(_one_line(f"kernelspace {args.command}: warning: {message}"), file=sys.stderr)

        warnings.showwarning = show
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print(f"kernelspace {args.command}: interrupted; finished work is kept: run the same command again to "
                  "resume", file=sys.stderr)
            return 130
        except Exception as err:
            if os.environ.get("KERNELSPACE_TRACEBACK"):
                raise
            message, status = _error_message(err)
            print(_one_line(f"kernelspace {args.command}: error: {message}"), file=sys.stderr)
            return status


if __name__ == "__main__":
    sys.exit(main())
