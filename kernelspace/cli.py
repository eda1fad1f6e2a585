"""The ``kernelspace`` command line: ``info`` and ``convert``; later capabilities add their sub-commands here."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from . import __version__
from .hub import DEFAULT_MODEL_DIR, ModelNotFoundError, convert_checkpoint
from .models import ARCHITECTURES


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


def _convert(args: argparse.Namespace) -> int:
    out = convert_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    print(f"wrote {out} (config.json, model.safetensors, README.md)")
    return 0


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
    convert.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    convert.set_defaults(func=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ModelNotFoundError) as err:
        print(f"kernelspace {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
