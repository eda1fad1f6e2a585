"""Finding and loading weights: the shipped default, local folders and files, the Hugging Face Hub, and the
checkpoints published with the paper (``*.pth``).

:func:`load_model` is the one entry point; :func:`convert_checkpoint` turns a published checkpoint into a
``save_pretrained`` folder (``config.json`` + ``model.safetensors``) that loads anywhere, offline too.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .device import DeviceLike, resolve_device
from .models import ARCHITECTURES, BKSNet, KernelSpaceModel
from .models.base import CONFIG_NAME, WEIGHTS_NAME

__all__ = [
    "load_model", "convert_checkpoint", "read_published_checkpoint", "is_model_folder", "ModelNotFoundError",
    "DEFAULT_MODEL_DIR",
]

#: Where the default model ships inside the package (``config.json`` + ``model.safetensors``).
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "default"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: What ``save_pretrained`` writes into a model folder: nothing else is ever deleted as "a model".
MODEL_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md"})


class ModelNotFoundError(FileNotFoundError):
    """No model could be found or fetched for the given source."""


def load_model(
    source: str | os.PathLike | None = None,
    *,
    device: DeviceLike = "auto",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> KernelSpaceModel:
    """Load a kernel-space model, in eval mode, on ``device``.

    Args:
        source: ``None`` for the default model shipped in the package; a local folder (``config.json`` +
            ``model.safetensors``, as written by ``save_pretrained``); a ``.safetensors`` file; a checkpoint
            published with the paper (``GOPRO_woVAE.pth`` and the like, recognised by its keys and read with
            ``torch.load(weights_only=True)``); or a Hugging Face Hub repo id ``"org/name"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        revision: passed to ``huggingface_hub`` for Hub repo ids.
        cache_dir: passed to ``huggingface_hub`` for Hub repo ids.
        token: passed to ``huggingface_hub`` for Hub repo ids. ``HF_HUB_OFFLINE=1`` loads from the local cache
            only.

    Example:
        >>> import tempfile
        >>> from kernelspace.models import BKSNet
        >>> folder = tempfile.mkdtemp()
        >>> BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=64, n_blocks=1).save_pretrained(folder)
        >>> type(load_model(folder, device="cpu")).__name__
        'BKSNet'
    """
    dev = resolve_device(device)
    if source is None:
        if not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
            raise ModelNotFoundError(
                "this version of kernelspace ships no default model yet; pass a source: a folder with "
                "config.json + model.safetensors, a .safetensors file, a published .pth checkpoint, or a Hub repo id"
            )
        model = _load_folder(DEFAULT_MODEL_DIR)
    else:
        model = _load_source(source, revision=revision, cache_dir=cache_dir, token=token)
    return model.to(dev).eval()


def _load_source(source: str | os.PathLike, **hub_kwargs: Any) -> KernelSpaceModel:
    path = Path(source)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_safetensors_file(path)
        if path.suffix in _CHECKPOINT_SUFFIXES:
            return read_published_checkpoint(path)
        raise ValueError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or {', '.join(_CHECKPOINT_SUFFIXES)}")
    if isinstance(source, str) and _REPO_ID.match(source) and not source.startswith((".", "/")):
        return _load_hub(source, **hub_kwargs)
    raise ModelNotFoundError(
        f"model source {str(source)!r} not found: it is no existing folder or file, nor a Hub repo id 'org/name'"
    )


def _model_class(config: dict[str, Any], where: str) -> type[KernelSpaceModel]:
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{where}: config names architecture {arch!r}; this version knows {sorted(ARCHITECTURES)} "
            "(a newer kernelspace may be needed)"
        )
    return ARCHITECTURES[arch]


def _parse_config(text: str, where: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: not a model config (invalid JSON: {str(err)[:80]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a model config is a JSON object of constructor arguments, got a {type(config).__name__}")
    return config


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read model config {path}: {err}") from None
    return _parse_config(text, str(path))


def _shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and the metadata of a safetensors file, from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err}); download or convert it again") from None


def _build(cls: type[KernelSpaceModel], config: dict[str, Any], weights: Path, where: str) -> KernelSpaceModel:
    """``cls(**config)`` with the weights of ``weights``, once the file's tensor names and shapes are those of
    the config: a config from elsewhere is checked (on the meta device) before anything is allocated."""
    kwargs = {k: v for k, v in config.items() if k != "architecture"}
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(**kwargs).state_dict().items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: invalid {cls.__name__} config ({err})") from None
    found, _ = _shapes(weights)
    if found != expected:
        missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        shape = next((k for k in sorted(expected.keys() & found.keys()) if expected[k] != found[k]), None)
        what = (f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra
                else f"{shape!r} is {found[shape]}, the config needs {expected[shape]}")
        raise ValueError(f"{weights}: the weights do not match the config of {where} ({what})")
    model = cls(**kwargs)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def _load_folder(folder: Path) -> KernelSpaceModel:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise ModelNotFoundError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    config = _read_config(config_path)
    return _build(_model_class(config, str(config_path)), config, weights_path, str(config_path))


def _load_safetensors_file(path: Path) -> KernelSpaceModel:
    _, meta = _shapes(path)
    if "kernelspace_config" in meta:
        config = _parse_config(meta["kernelspace_config"], f"{path} (its kernelspace_config metadata)")
    elif (path.parent / CONFIG_NAME).is_file():
        config = _read_config(path.parent / CONFIG_NAME)
    else:  # a bare state dict, e.g. a published checkpoint saved as safetensors
        return _build_from_state_dict(load_file(str(path)), str(path))
    return _build(_model_class(config, str(path)), config, path, str(path))


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that ``save_pretrained`` wrote and nothing else: only ``config.json``,
    ``model.safetensors`` and ``README.md``, plain files, with a config naming a known architecture. Only such
    a folder is ever replaced as "a model" (``convert --overwrite``, the trainer's ``OUT/model``).

    Example:
        >>> import tempfile, pathlib
        >>> from kernelspace.models import KernelField
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> KernelField(cell=32, psf_size=7).save_pretrained(folder)
        >>> is_model_folder(folder)
        True
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> is_model_folder(folder)
        False
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    entries = list(path.iterdir())
    if not entries or any(p.name not in MODEL_FILES or p.is_symlink() or not p.is_file() for p in entries):
        return False
    try:
        return _read_config(path / CONFIG_NAME).get("architecture") in ARCHITECTURES
    except ValueError:
        return False


def _unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    # Training frameworks nest the weights ("params" in BasicSR, "state_dict" in Lightning) and DataParallel
    # prefixes every name with "module.".
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{where}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _build_from_state_dict(state_dict: dict[str, torch.Tensor], where: str) -> KernelSpaceModel:
    if "feature_extractor.0.weight" in state_dict and any(k.startswith("adapter.model.") for k in state_dict):
        try:
            model = BKSNet(**BKSNet.config_from_state_dict(state_dict))
            model.load_state_dict(state_dict, strict=True)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{where}: not a BKS state dict this version can load ({str(err).splitlines()[0]})") from None
        return model
    sample = ", ".join(list(state_dict)[:3])
    raise ValueError(f"{where}: unrecognised checkpoint (first keys: {sample}); expected a BKS/KernelWizard state dict")


def read_published_checkpoint(path: str | os.PathLike) -> KernelSpaceModel:
    """Load a checkpoint published with the paper (e.g. ``GOPRO_wVAE.pth``) into a :class:`BKSNet`.

    The file is read with ``torch.load(weights_only=True)``, so no code inside it runs; the configuration
    (widths, block counts, VAE head) is inferred from the parameter names and shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False, which would run whatever code the file holds: not relayed.
        found = re.search(r"unsupported \S+ [\w.]+|Unsupported operand \d+", str(err), re.IGNORECASE)
        raise ValueError(
            f"{path} holds more than tensors ({found.group(0) if found else 'pickled objects'}), and kernelspace "
            "never unpickles objects (that can run code); use the published checkpoint itself, or a .safetensors file"
        ) from None
    except Exception as err:  # torch raises several unrelated types for corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path}: {first} (a truncated or corrupt file? download it again)") from None
    return _build_from_state_dict(_unwrap_state_dict(obj, str(path)), str(path))


def _load_hub(
    repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None, token: str | bool | None
) -> KernelSpaceModel:
    from . import __version__

    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        config_path = hf_hub_download(
            repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, token=token,
            library_name="kernelspace", library_version=__version__,
        )
        weights_path = hf_hub_download(
            repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir, token=token,
            library_name="kernelspace", library_version=__version__,
        )
        config = _read_config(Path(config_path))
        return _build(_model_class(config, repo_id), config, Path(weights_path), where)
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError) as err:
        raise ModelNotFoundError(
            f"could not load model {where} from the Hugging Face Hub or its local cache "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). Ways out: connect to the Internet and unset "
            "HF_HUB_OFFLINE; copy a Hub cache that holds the repo here (HF_HOME or cache_dir=); or download the "
            "folder elsewhere and pass its local path (config.json + model.safetensors)"
        ) from err


def convert_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``out_dir`` (``config.json``, ``model.safetensors``, model card) from a published checkpoint.

    The folder appears whole or not at all: it is written beside its final place and renamed into it. An
    existing ``out_dir`` is replaced only with ``overwrite=True`` and only when it is a model folder
    (:func:`is_model_folder`: what an earlier conversion wrote), never a folder with other files in it, a
    symbolic link, or the checkpoint's folder.
    """
    checkpoint, out_dir = Path(checkpoint), Path(os.path.abspath(out_dir))  # "." has a parent to write beside
    model = read_published_checkpoint(checkpoint)
    if out_dir.is_symlink():
        raise ValueError(f"{out_dir} is a symbolic link; give the folder itself, or a new folder")
    if out_dir.exists():
        if checkpoint.resolve().is_relative_to(out_dir.resolve()):
            raise ValueError(f"{out_dir} holds the input checkpoint; choose another output folder")
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; choose a new folder or pass overwrite=True")
        if not is_model_folder(out_dir):
            names = ", ".join(sorted(p.name for p in out_dir.iterdir())[:3]) if out_dir.is_dir() else "a file"
            raise ValueError(
                f"{out_dir} is not a model folder kernelspace wrote (it holds {names or 'nothing'}); overwrite only "
                "replaces config.json + model.safetensors + README.md folders: choose a new folder"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    tmp, old = (out_dir.with_name(f".{out_dir.name}.{token}.{end}") for end in ("part", "old"))
    tmp.mkdir()  # not mkdtemp: the folder gets the permissions mkdir gives, not owner-only
    try:
        model.save_pretrained(tmp)
        if out_dir.exists():
            os.replace(out_dir, old)  # the old model moves aside, the new one takes its place, then the old goes
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
