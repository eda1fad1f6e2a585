"""Training kernel-space models: :func:`train` (and ``kernelspace train``).

Data: a folder of clean photos, blurred on the fly by :class:`~kernelspace.data.SyntheticBlur` (whose known PSF
models such as :class:`~kernelspace.models.KernelField` learn from), or a paired dataset (GOPRO, REDS or plain
layout; :class:`~kernelspace.data.PairedFolder`). The objective is the model's
:meth:`~kernelspace.models.KernelSpaceModel.training_loss` (the paper's joint Charbonnier loss by default).

Every step's data is a function of ``(seed, step)`` only, and the run folder holds an atomic checkpoint (model,
optimiser, step), so a run that is killed resumes where its last checkpoint left it by running the same command
again. Ctrl-C writes a checkpoint before stopping. Several GPUs: launch with ``torchrun --nproc-per-node N``; each
process takes its share of every batch and gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`.

Run folder: ``checkpoint.pt``, ``log.jsonl`` (one line of figures per ``log_every`` steps) and, at the end,
``model/`` (``config.json``, ``model.safetensors`` and a model card), loadable with
:func:`kernelspace.load_model`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .data.folders import PairedFolder, PhotoFolder, find_pairs
from .data.synthetic import SyntheticBlur
from .device import resolve_device
from .models.base import KernelSpaceModel

__all__ = ["TrainConfig", "train", "model_for_run"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


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

    def __init__(self, model: KernelSpaceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, sharp, blurry, psf, generator):
        return self.model.training_loss(sharp, blurry, psf, generator=generator)


def _is_paired(config: TrainConfig) -> bool:
    if config.paired is not None:
        return config.paired
    try:
        find_pairs(config.data)
    except ValueError:
        return False
    return True


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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


def train(model: KernelSpaceModel, config: TrainConfig, *, progress: bool = True) -> KernelSpaceModel:
    """Train ``model`` as ``config`` says (resuming from the run folder's checkpoint); returns the trained model.

    The final model is written to ``OUT/model`` as well. See the module docstring for data, resuming and
    torchrun.

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
        ['checkpoint.pt', 'log.jsonl', 'model']
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
    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    paired = _is_paired(config)
    side = model.training_side(config.crop)
    dataset = (PairedFolder(config.data, crop=side, seed=config.seed) if paired
               else PhotoFolder(config.data, crop=side, seed=config.seed, cache=True))
    blur = SyntheticBlur(**{"p_nonuniform": 0.0, "gamma": 2.2, **config.blur})

    model = model.to(device).train()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} with config {model.config} has no parameters to train")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.475 * (1 + math.cos(math.pi * min(s / max(config.max_steps, 1), 1.0)))
    )
    start, elapsed, hardware = 0, 0.0, _hardware(device)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        # Keys a newer version added (with their defaults) may be missing from an older checkpoint's config.
        if any(model.config.get(key) != value for key, value in state["model_config"].items()):
            raise ValueError(
                f"{checkpoint} was written for a model with config {state['model_config']}, not {model.config}; "
                "use another run folder or the same model"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, elapsed = state["step"], state["elapsed"]
        hardware = state.get("hardware", hardware)  # where the run began
    objective = _Objective(model)
    if distributed:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    def save(step: int) -> None:
        if rank == 0:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                          "step": step, "elapsed": elapsed, "hardware": hardware, "model_config": model.config,
                          "train_config": asdict(config)}, checkpoint)

    sampler = _StepBatches(len(dataset), config.batch_size, config.seed, start, config.max_steps, rank, world)
    loader = DataLoader(_AtStep(dataset), batch_sampler=sampler, num_workers=config.workers,
                        persistent_workers=False, worker_init_fn=_one_thread if config.workers else None)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=start, desc="train", unit="step", file=sys.stderr)
    step, last, t0 = start, {}, time.perf_counter()
    log = open(out / LOG_NAME, "a") if rank == 0 else None
    try:
        for step, batch in enumerate(loader, start + 1):
            g = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * world + rank)
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
    except KeyboardInterrupt:
        elapsed += time.perf_counter() - t0
        save(step)
        raise
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    model.eval()
    if rank == 0:
        bank = torch.Generator().manual_seed(config.seed)
        model.finish_training(blur.sample_params(512, 8, 8, bank).psf)
        final, tmp = out / "model", out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if not last and (out / LOG_NAME).is_file():  # finishing a run whose steps were all done before
            lines = (out / LOG_NAME).read_text().splitlines()
            last = {k: v for k, v in json.loads(lines[-1]).items() if k not in ("step", "elapsed_s")} if lines else {}
        (tmp / "README.md").write_text(_model_card(model, config, paired, step, elapsed, last, hardware))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    if distributed:
        dist.destroy_process_group()
    return model


def model_for_run(
    out: str | os.PathLike, model: str = "kernel-field", model_config: dict | None = None, *, seed: int = 0
) -> KernelSpaceModel:
    """The model a run trains: the one its checkpoint was made for when ``out`` has one (resuming), else a new
    model of architecture ``model`` built with ``model_config`` (initialised from ``seed``), else the model
    ``load_model(model)`` loads (fine-tuning)."""
    torch.manual_seed(seed)
    from .hub import load_model
    from .models import ARCHITECTURES

    checkpoint = Path(out) / CHECKPOINT_NAME
    if checkpoint.is_file():
        saved = dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model_config"])
        return ARCHITECTURES[saved.pop("architecture")](**saved)
    if model in ARCHITECTURES:
        return ARCHITECTURES[model](**(model_config or {}))
    if model_config:
        raise ValueError("model_config applies to a new model (an architecture name), not to a loaded one")
    return load_model(model, device="cpu")


def _one_thread(_: int) -> None:
    # Worker processes only decode and crop images; one thread each keeps them off the training threads' cores.
    torch.set_num_threads(1)
