"""Training kernel-space models: :func:`train` (and ``kernelspace train``).

Data: a folder of clean photos, blurred on the fly by :class:`~kernelspace.data.SyntheticBlur` (whose known PSF
models such as :class:`~kernelspace.models.KernelField` learn from), or a paired dataset (GOPRO, REDS or plain
layout; :class:`~kernelspace.data.PairedFolder`). The objective is the model's
:meth:`~kernelspace.models.KernelSpaceModel.training_loss` (the paper's joint Charbonnier loss by default).

Every step's data is a function of ``(seed, step)`` only, and the run folder holds an atomic checkpoint (model,
optimiser, schedule, step), so a run that is killed resumes where its last checkpoint left it by running the
same command again. Ctrl-C lets the step under way finish and checkpoints it before stopping, so a resumed run
ends with the weights of an uninterrupted one. A resumed run must have the settings of its checkpoint
(``RESUME_SETTINGS``; ``overwrite=True`` starts again instead). Several GPUs: launch with ``torchrun
--nproc-per-node N``; each process takes its share of every batch and gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`.

Run folder: ``checkpoint.safetensors`` (the tensors; everything else as JSON in its header: nothing is
unpickled), ``log.jsonl`` (one line of figures per ``log_every`` steps) and, at the end, ``model/``
(``config.json``, ``model.safetensors`` and a model card), loadable with :func:`kernelspace.load_model`. The
folder is held by one run at a time (:class:`~kernelspace.jobs.outputs.OutputFolder`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .data.folders import PairedFolder, PhotoFolder, find_pairs
from .data.synthetic import SyntheticBlur
from .device import resolve_device
from .files import safetensors_chunks
from .jobs.outputs import OutputFolder
from .models.base import KernelSpaceModel

__all__ = ["TrainConfig", "train", "model_for_run", "RESUME_SETTINGS", "TRAINING_DEFAULTS"]

CHECKPOINT_NAME = "checkpoint.safetensors"
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"  # kernelspace 0.1's pickle: never loaded
LOG_NAME = "log.jsonl"
MODEL_NAME = "model"
_META_KEY = "kernelspace_checkpoint"

#: The settings a resumed run must share with its checkpoint, with the option that sets each. The others
#: (device, workers, how often to checkpoint and log, and max_steps, which the learning-rate schedule follows)
#: may change between runs.
RESUME_SETTINGS = {
    "data": "DATA", "paired": "--paired/--photos", "crop": "--crop", "batch_size": "--batch-size", "lr": "--lr",
    "seed": "--seed", "blur": "--blur", "model": "--model", "objective": "--objective",
}
#: Constructor arguments a new model of each architecture trains with unless ``model_config`` says otherwise:
#: a KernelField learns its kernel space (a latent of 64, as the shipped model), which it lacks by default.
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {"kernel-field": {"latent_dim": 64}}


@dataclass
class TrainConfig:
    """What :func:`train` does; every field has a ``kernelspace train`` option of the same name.

    Args:
        data: a folder of clean photos (any layout, searched recursively) or a paired dataset.
        out: the run folder (checkpoint, log, final model); created if missing, resumed if it has a checkpoint.
        paired: whether ``data`` is a paired dataset; ``None`` decides by looking for a paired layout.
        crop: side of the random square crops (padded up to what the model accepts).
        batch_size: images per step (across all processes).
        lr: Adam's learning rate (cosine decay to 5% of it over ``max_steps``).
        max_steps: the step to stop at (a resumed run counts from its checkpoint).
        seed: seeds the data, the synthetic blur and the model's random draws.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:n]"`` (under torchrun each process takes its local GPU).
        workers: DataLoader worker processes reading the images.
        checkpoint_every: steps between checkpoints.
        log_every: steps between log lines.
        blur: keyword arguments of the :class:`~kernelspace.data.SyntheticBlur` used on clean photos.
        model: what the model was made from (the CLI's ``--model``: an architecture, or a source to fine-tune),
            recorded in the checkpoint so that a resumed run is refused when it changed; ``None``: not recorded.
        objective: what is trained, one of the model's ``training_objectives`` (a KernelField: ``"prior"``, its
            kernel space, or ``"extractor"``, its learned extractor); ``None``: the model's first. The model's
            other parameters are frozen.
    """

    data: str
    out: str
    paired: bool | None = None
    crop: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    max_steps: int = 1000
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    blur: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    objective: str | None = None


class _StepBatches(Sampler):
    """Batches of dataset indices as a function of (seed, step): resumable at any step, the same on every rank."""

    def __init__(self, size: int, batch: int, seed: int, start: int, stop: int, rank: int, world: int) -> None:
        self.size, self.batch, self.seed, self.start, self.stop = size, batch, seed, start, stop
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            picks = torch.randint(0, self.size, (self.batch,), generator=g).tolist()
            yield [(step, i) for i in picks[self.rank :: self.world]]

    def __len__(self) -> int:
        return self.stop - self.start


class _AtStep(Dataset):
    """Reads item ``i`` with the crop/flip/turn of ``step``."""

    def __init__(self, dataset: PhotoFolder | PairedFolder) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        step, index = key
        self.dataset.set_epoch(step)
        return self.dataset[index]


class _Objective(nn.Module):
    """The model's training loss as a module's forward, which DistributedDataParallel synchronises."""

    def __init__(self, model: KernelSpaceModel, objective: str | None) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, sharp, blurry, psf, generator):
        return self.model.training_loss(sharp, blurry, psf, generator=generator, objective=self.objective)


def _is_paired(config: TrainConfig) -> bool:
    if config.paired is not None:
        return config.paired
    try:
        find_pairs(config.data)
    except ValueError:
        return False
    return True


def _refuse_legacy(out: Path) -> None:
    legacy = out / LEGACY_CHECKPOINT_NAME
    if legacy.exists():
        raise ValueError(
            f"{legacy} is a checkpoint of an older kernelspace (a pickle), and pickles are never loaded (unpickling "
            "can run code); this version cannot resume it: train into a new run folder"
        )


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (everything but the tensors), read from the safetensors header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META_KEY])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable kernelspace checkpoint ({err}); pass --overwrite to start "
                         "the run again, or use a new run folder") from None


def _checkpoint_chunks(
    model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> tuple[bytes | memoryview, ...]:
    """A checkpoint file's bytes: tensors (weights, optimiser moments) in safetensors, the rest as JSON."""
    tensors = {f"model/{name}": t for name, t in model.state_dict().items()}
    saved = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in saved["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {**meta, "optimizer": {"param_groups": saved["param_groups"], "scalars": scalars}}
    return safetensors_chunks(tensors, {_META_KEY: json.dumps(meta, sort_keys=True)})


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model`` and ``optimizer`` from a checkpoint; returns its JSON part."""
    meta = _checkpoint_meta(path)
    tensors = load_file(str(path))  # on the CPU: load_state_dict moves each tensor where its parameter is
    model.load_state_dict({k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta


def _settings(config: TrainConfig, paired: bool) -> dict[str, Any]:
    """The ``RESUME_SETTINGS`` of a run, as they read back from a checkpoint."""
    values = {**asdict(config), "data": str(Path(config.data).resolve()), "paired": paired}
    return json.loads(json.dumps({key: values[key] for key in RESUME_SETTINGS}))


def _check_resumable(checkpoint: Path, saved: dict[str, Any], config: TrainConfig, paired: bool, model: KernelSpaceModel) -> None:
    """Refuse to resume ``checkpoint`` with other settings or another model than it was made with."""
    now = _settings(config, paired)
    for key, option in RESUME_SETTINGS.items():
        if saved["settings"].get(key) != now[key]:
            raise ValueError(
                f"{checkpoint} was made with {option} {saved['settings'].get(key)!r}, not {now[key]!r}; give the "
                "same settings to resume, pass --overwrite to start the run again, or use a new run folder"
            )
    # Keys a newer version added (with their defaults) may be missing from an older checkpoint's config.
    if any(model.config.get(key) != value for key, value in saved["model_config"].items()):
        raise ValueError(
            f"{checkpoint} was written for a model with config {saved['model_config']}, not {model.config}; "
            "use another run folder or the same model"
        )


def _clear_run(folder: OutputFolder) -> None:
    """``overwrite``: delete what a run wrote (its checkpoint, log and model), after checking each is that."""
    from .hub import is_model_folder

    checkpoint, log, final = (folder.confine(name) for name in (CHECKPOINT_NAME, LOG_NAME, MODEL_NAME))
    if checkpoint.exists():
        _checkpoint_meta(checkpoint)  # refuses what is not a checkpoint
    _read_log(log)  # refuses what is not a training log
    if final.exists() and not is_model_folder(final):
        raise _foreign_model(final)
    checkpoint.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)


def _foreign_model(final: Path) -> ValueError:
    names = ", ".join(sorted(p.name for p in final.iterdir())[:4]) if final.is_dir() else "a file"
    return ValueError(
        f"{final} exists and is not a model folder kernelspace wrote (it holds {names}); the run writes its model "
        "there: move it away or use another run folder"
    )


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a training log (a last line cut short by a kill is left out)."""
    if not path.exists():
        return []
    try:
        lines = [json.loads(line) for line in path.read_bytes().decode().split("\n")[:-1] if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        lines = None
    if lines is None or not all(isinstance(line, dict) and "step" in line for line in lines):
        raise ValueError(f"{path} is not a kernelspace training log; move it away or use another run folder")
    return lines


def _keep_log_until(folder: OutputFolder, path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (logged by a run killed before its next checkpoint), which the resumed
    run logs again: each step appears once."""
    lines = _read_log(path)
    kept = [line for line in lines if line["step"] <= step]
    cut_short = path.exists() and not path.read_bytes().endswith(b"\n") and path.stat().st_size > 0
    if len(kept) < len(lines) or cut_short:
        folder.write(path, "".join(json.dumps(line) + "\n" for line in kept).encode())


class _FinishStepOnInterrupt:
    """While active, a first Ctrl-C (SIGINT) only sets :attr:`requested`, so that the training step under way
    finishes and is checkpointed; a second one interrupts at once (the last checkpoint then stands)."""

    def __enter__(self) -> _FinishStepOnInterrupt:
        self.requested, self.previous = False, None
        try:
            self.previous = signal.signal(signal.SIGINT, self._on_interrupt)
        except ValueError:  # not the main thread: signals go elsewhere anyway
            pass
        return self

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _model_card(
    model: KernelSpaceModel, config: TrainConfig, paired: bool, step: int, wall: float, last: dict, hardware: str
) -> str:
    figures = ", ".join(f"{k} {v:.5g}" for k, v in last.items())
    return f"""---
library_name: kernelspace
tags: [image-deblurring, blur-kernel-space]
---
# {type(model).__name__} ({model.architecture})

Trained with `kernelspace train` (kernelspace, torch {torch.__version__}).

- data: `{config.data}` ({'paired' if paired else 'clean photos + synthetic blur'}), crops {config.crop},
  batch {config.batch_size}
- steps: {step}, seed {config.seed}, lr {config.lr}
- wall time: {wall / 60:.1f} min on {hardware}
- last logged figures: {figures}
- config: `{json.dumps(model.config, sort_keys=True)}`

Training settings: `{json.dumps(asdict(config), sort_keys=True)}`
"""


def train(
    model: KernelSpaceModel, config: TrainConfig, *, progress: bool = True, overwrite: bool = False
) -> KernelSpaceModel:
    """Train ``model`` as ``config`` says (resuming from the run folder's checkpoint); returns the trained model.

    The final model is written to ``OUT/model`` as well. With ``overwrite``, a run folder's checkpoint, log and
    model are deleted first and the run starts again (each is checked to be what a run wrote; nothing else in
    the folder is touched). See the module docstring for data, resuming and torchrun.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from kernelspace.io import save_image
        >>> from kernelspace.models import KernelField
        >>> photos = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save_image((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8), photos / "a.png")
        >>> model = KernelField(cell=32, psf_size=9, latent_dim=4, vae_width=4, prior="latent")
        >>> cfg = TrainConfig(str(photos), tempfile.mkdtemp(), crop=32, batch_size=2, max_steps=2,
        ...                   blur={"max_extent": 5, "max_offset": 1, "p_nonuniform": 0})
        >>> _ = train(model, cfg, progress=False)
        >>> sorted(p.name for p in pathlib.Path(cfg.out).iterdir())
        ['checkpoint.safetensors', 'log.jsonl', 'model']
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            config = TrainConfig(**{**asdict(config), "device": f"cuda:{local}"})
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the number of processes ({world})")
    # Everything that can be refused is checked before the run folder is created.
    objective = model.check_objective(config.objective)
    try:
        trainable, reason = {id(p) for p in model.trainable_parameters(objective)}, ""
    except ValueError as error:  # the model lacks the part the objective trains
        trainable, reason = set(), f": {error}"
    if not trainable:
        hint = " (latent_dim 0: give --model-config '{\"latent_dim\": 64}')" if model.config.get("latent_dim") == 0 else ""
        raise ValueError(f"{type(model).__name__} with config {model.config} has no parameters to train for "
                         f"{objective!r}{hint}{reason}")
    # The others are frozen for the run (DistributedDataParallel then leaves them alone), and thawed after it.
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trainable]
    device = resolve_device(config.device)
    out = Path(config.out).absolute()  # the run folder's files are named relative to it and by paths from it
    _refuse_legacy(out)
    paired = _is_paired(config)
    side = model.training_side(config.crop, objective)
    dataset = (PairedFolder(config.data, crop=side, seed=config.seed) if paired
               else PhotoFolder(config.data, crop=side, seed=config.seed, cache=True))
    blur = SyntheticBlur(**{"p_nonuniform": 0.0, "gamma": 2.2, **config.blur})
    with OutputFolder(out) if rank == 0 else contextlib.nullcontext() as folder:
        try:
            for p in frozen:
                p.requires_grad_(False)
            model = _run(model, config, folder, dataset, blur, paired, device, rank, world, distributed, progress, overwrite)
        except BaseException:
            if folder is not None and folder.created and not (out / CHECKPOINT_NAME).exists():
                (out / LOG_NAME).unlink(missing_ok=True)  # a run that failed before its first checkpoint leaves nothing
            raise
        finally:
            for p in frozen:
                p.requires_grad_(True)
    if distributed:
        # Ranks leave together: one that tears gloo down while rank 0 still writes the model aborts the run.
        dist.barrier()
        dist.destroy_process_group()
    return model


def _run(
    model: KernelSpaceModel, config: TrainConfig, folder: OutputFolder | None, dataset: Dataset, blur: SyntheticBlur,
    paired: bool, device: torch.device, rank: int, world: int, distributed: bool, progress: bool, overwrite: bool,
) -> KernelSpaceModel:
    """The training loop of :func:`train`, in the run folder ``folder`` (held by rank 0; ``None`` elsewhere)."""
    from .hub import is_model_folder

    out = Path(config.out).absolute()  # as in train: confine() takes paths built from it
    checkpoint, log_path, final = out / CHECKPOINT_NAME, out / LOG_NAME, out / MODEL_NAME
    if folder is not None:
        if overwrite:
            _clear_run(folder)
        for path in (checkpoint, log_path):
            folder.confine(path)
        if folder.confine(final).exists() and not is_model_folder(final):
            raise _foreign_model(final)  # now, not after the training
    if distributed:
        dist.barrier()  # rank 0 has cleared the folder (overwrite) before the others look for a checkpoint
    model = model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.475 * (1 + math.cos(math.pi * min(s / max(config.max_steps, 1), 1.0)))
    )
    start, elapsed, hardware = 0, 0.0, _hardware(device)
    if checkpoint.is_file():
        saved = _checkpoint_meta(checkpoint)
        _check_resumable(checkpoint, saved, config, paired, model)
        _load_checkpoint(checkpoint, model, optimizer)
        schedule.load_state_dict(saved["schedule"])
        start, elapsed = saved["step"], saved["elapsed"]
        hardware = saved.get("hardware", hardware)  # where the run began
    if folder is not None:
        _keep_log_until(folder, log_path, start)
    objective = _Objective(model, config.objective)
    if distributed:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    def save(step: int) -> None:
        if folder is not None:
            meta = {"step": step, "elapsed": elapsed, "hardware": hardware, "model_config": model.config,
                    "settings": _settings(config, paired), "train_config": asdict(config),
                    "schedule": schedule.state_dict()}
            folder.write(checkpoint, *_checkpoint_chunks(model, optimizer, meta))

    sampler = _StepBatches(len(dataset), config.batch_size, config.seed, start, config.max_steps, rank, world)
    loader = DataLoader(_AtStep(dataset), batch_sampler=sampler, num_workers=config.workers,
                        persistent_workers=False, worker_init_fn=_one_thread if config.workers else None)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=start, desc="train", unit="step", file=sys.stderr)
    step, last, t0 = start, {}, time.perf_counter()
    log = open(log_path, "a") if folder is not None else None
    completed = True  # the model and optimiser hold the state after ``step``, not half of a step
    try:
        with _FinishStepOnInterrupt() as interrupt:
            for this_step, batch in enumerate(loader, start + 1):
                completed = False
                g = torch.Generator().manual_seed((config.seed * 1_000_003 + this_step) * world + rank)
                if paired:
                    sharp, blurry, psf = batch["sharp"].to(device), batch["blurry"].to(device), None
                else:
                    sharp = batch.to(device)
                    params = blur.sample_params(len(sharp), sharp.shape[-2], sharp.shape[-1], g)
                    blurry, psf = blur.apply(sharp, params, return_psf=True)
                loss, figures = objective(sharp, blurry, psf, g)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step, completed = this_step, True
                last = {"loss": loss.item(), **figures}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()})
                if log is not None and (step % config.log_every == 0 or step == config.max_steps):
                    log.write(json.dumps({"step": step, "elapsed_s": round(elapsed + time.perf_counter() - t0, 2), **last}) + "\n")
                    log.flush()
                if step % config.checkpoint_every == 0 or step == config.max_steps:
                    elapsed += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    save(step)
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if completed:  # the last finished step; a second Ctrl-C mid-step leaves the last checkpoint as it was
            elapsed += time.perf_counter() - t0
            save(step)
        raise
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    model.eval()
    if folder is not None:
        bank = torch.Generator().manual_seed(config.seed)
        model.finish_training(blur.sample_params(512, 8, 8, bank).psf, config.objective)
        if not last:  # finishing a run whose steps were all done before
            lines = _read_log(log_path)
            last = {k: v for k, v in lines[-1].items() if k not in ("step", "elapsed_s")} if lines else {}
        _write_model(folder, model, _model_card(model, config, paired, step, elapsed, last, hardware))
    return model


def _write_model(folder: OutputFolder, model: KernelSpaceModel, card: str) -> None:
    """Put the trained model at ``OUT/model``, replacing only a model folder (what an earlier run wrote)."""
    from .hub import is_model_folder

    final = folder.confine(MODEL_NAME)
    tmp = folder.temp_path(MODEL_NAME)
    model.save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    if not final.exists():
        os.replace(tmp, final)
        return
    if not is_model_folder(final):  # files were put there during the run
        raise ValueError(f"{_foreign_model(final)}; the checkpoint is complete: run the same command again to write it")
    old = folder.temp_path("old-model")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old)


def model_for_run(
    out: str | os.PathLike,
    model: str = "kernel-field",
    model_config: dict | None = None,
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> KernelSpaceModel:
    """The model a run trains: the one its checkpoint was made for when ``out`` has one (resuming; refused when
    ``model`` or ``model_config`` ask for another), else a new model of architecture ``model`` built with
    ``TRAINING_DEFAULTS`` and ``model_config`` (initialised from ``seed``), else the model
    ``load_model(model)`` loads (fine-tuning), its config updated by ``model_config`` when given (its weights
    kept; parts that adds start fresh). ``overwrite``: the checkpoint is ignored (the run starts again).

    Example:
        >>> import tempfile
        >>> model_for_run(tempfile.mkdtemp(), "kernel-field").config["latent_dim"]
        64
    """
    torch.manual_seed(seed)
    from .hub import load_model
    from .models import ARCHITECTURES

    requested = {**TRAINING_DEFAULTS.get(model, {}), **(model_config or {})}
    _refuse_legacy(Path(out))
    checkpoint = Path(out) / CHECKPOINT_NAME
    if checkpoint.is_file() and not overwrite:
        saved = _checkpoint_meta(checkpoint)
        config = dict(saved["model_config"])
        architecture = config.pop("architecture")
        recorded = saved["settings"].get("model")
        if recorded is not None and recorded != model:
            raise ValueError(f"{checkpoint} was made with --model {recorded!r}, not {model!r}; give the same settings "
                             "to resume, pass --overwrite to start the run again, or use a new run folder")
        if model in ARCHITECTURES:
            defaults = {name: p.default for name, p in inspect.signature(ARCHITECTURES[model]).parameters.items()
                        if p.default is not inspect.Parameter.empty}
            asked = json.loads(json.dumps({**defaults, **requested}))
            changed = sorted(k for k in asked if k in config and asked[k] != config[k])
            if changed:
                raise ValueError(
                    f"{checkpoint} was made with --model-config {changed[0]}={config[changed[0]]!r}, not "
                    f"{asked[changed[0]]!r}; give the same settings to resume, pass --overwrite to start the run "
                    "again, or use a new run folder"
                )
        return ARCHITECTURES[architecture](**config)
    if model in ARCHITECTURES:
        return ARCHITECTURES[model](**requested)
    loaded = load_model(model, device="cpu")
    return _reconfigured(loaded, model_config) if model_config else loaded


def _reconfigured(loaded: KernelSpaceModel, changes: dict) -> KernelSpaceModel:
    """``loaded`` rebuilt with its config updated by ``changes``: every weight it had is kept, parts the changes
    add (a learned extractor, say) start fresh; refused when a kept weight no longer fits."""
    from .models import ARCHITECTURES

    config = {**loaded.config, **changes}
    model = ARCHITECTURES[config.pop("architecture")](**config)
    state, own = loaded.state_dict(), model.state_dict()
    misfit = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
    if misfit:
        raise ValueError(f"--model-config {changes} changes the loaded model's weights ({', '.join(misfit[:3])}"
                         f"{', ...' if len(misfit) > 3 else ''}); it may only add parts")
    model.load_state_dict(state, strict=False)
    return model


def _one_thread(_: int) -> None:
    # Worker processes only decode and crop images; one thread each keeps them off the training threads' cores.
    torch.set_num_threads(1)
