"""The paper's augmentation experiment at CPU scale: does kernel-space blur help a deblurring network?

    OMP_NUM_THREADS=2 python examples/augmentation_experiment/run.py [--arms a,b,c,d] [--until N] [--device D]
        [--results NAME] [--photos DIR]

Four arms train the same small SRN-Deblur network (``srn.py``) from the same initial weights, with the same
steps, batches, crops, learning-rate schedule and seeds, on clean photos of ../shared/data/train (random crops,
flips and 90-degree turns, ``PhotoFolder``) degraded on the fly; only the degradation differs:

- (a) common augmentation: kornia's ``RandomMotionBlur`` (a line of 9 to 31 px, any angle, uneven weight along
  it), then Gaussian noise (sigma uniform in [0, 0.01]);
- (b) ``KernelSpaceAugment`` blur (the default model's prior, a kernel of its own per sample), then the same
  Gaussian noise;
- (c) ``KernelSpaceAugment`` with the degradation chain, ``Degradation()``: the same kernels as (b) (the chain's
  parameters are drawn after the blur's), Poisson-Gaussian sensor noise in linear light instead of the additive
  noise, then JPEG on half of the samples;
- (d) a diagnostic: (b)'s kernels and noise, but blurring the stored values (a camera response of gamma 1, as
  the Levin and Kodak sets were made) instead of linear light with gamma 2.2;
- (e) (c) with a camera response of each sample's own, uniform in [1.0, 2.2] (``Degradation(response=(1.0,
  2.2))``): the same kernels and chain draws as (c).

Every arm quantises to 8 bits. Every random draw comes from a generator seeded by (seed, step, purpose), so the
arms see the same crops and the same noise draws, and a resumed run is the same as an uninterrupted one.

They are scored on real blur never seen in training: the 6 GoPro pairs and 24 Kodak photos with large real
camera-shake kernels (centre 512x512 crops) and the 32 Levin 2009 images (grey, fed to the network as 3 equal
channels, the output averaged back to grey), PSNR and SSIM after the Levin protocol's alignment
(``kernelspace.metrics.aligned``: best sub-pixel shift, 15-px crop), the blurry input's own scores beside them.

Each arm checkpoints to ``--work`` every ``--save-every`` steps (atomically); running the command again
continues where it stopped, and a finished arm is only evaluated. Results: a printed table,
benchmarks/results/augmentation_experiment.json (means per set under ``"sets"``, per-image scores and wins)
and crops in docs/img/augmentation/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image

from kernelspace import Degradation, KernelSpaceAugment
from kernelspace.data import PhotoFolder
from kernelspace.models import KernelField
from kernelspace.device import resolve_device
from kernelspace.io import save_image
from kernelspace.metrics import aligned, psnr, ssim

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "benchmarks")]
from common import report  # noqa: E402  (benchmarks/common.py: the machine and the results JSON)
from srn import SRNDeblur, multiscale_loss  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PICTURES = ROOT / "docs" / "img" / "augmentation"
ARMS = {"a": "kornia RandomMotionBlur", "b": "KernelSpaceAugment blur", "c": "KernelSpaceAugment + degradation chain",
        "d": "KernelSpaceAugment blur in the stored values (gamma 1)",
        "e": "KernelSpaceAugment + degradation chain, response gamma uniform in [1.0, 2.2]"}
SETS = ("gopro_pairs6", "levin2009", "kodak24_large_blur")
EVAL_SIDE = 512  # GoPro and Kodak are scored on their centre crop: the alignment search on full frames is slow
PICTURED = {"gopro_pairs6/04": (slice(60, 316), slice(0, 256)), "levin2009/im1_kernel2": (slice(15, 240), slice(15, 240)),
            "kodak24_large_blur/20": (slice(128, 384), slice(128, 384))}


@dataclass(frozen=True)
class Budget:
    """Everything that defines a training run; a checkpoint is only resumed under the same budget."""

    steps: int = 20000
    batch: int = 8
    crop: int = 96
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    width: int = 16
    blocks: int = 1
    motion_min: int = 9
    motion_max: int = 31
    noise_max: float = 0.01
    pool_size: int | None = None


def _seeded(*key: object) -> torch.Generator:
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class BlurredPhotos:
    """Training batches ``(sharp, blurry)`` of one arm; :meth:`batch` depends only on the step."""

    def __init__(self, budget: Budget, arm: str, photos: str | os.PathLike = DATA / "train") -> None:
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
        self.budget, self.arm = budget, arm
        self.photos = PhotoFolder(photos, crop=budget.crop, cache=True, seed=budget.seed)
        self.motion = K.RandomMotionBlur(
            (budget.motion_min, budget.motion_max), angle=90.0, direction=1.0, border_type="reflect", p=1.0
        )
        self.kernel_space = None if arm == "a" else KernelSpaceAugment(
            p=1.0, pool_size=budget.pool_size, pool_seed=budget.seed,
            degradation={"c": Degradation(), "e": Degradation(response=(1.0, 2.2))}.get(arm),
            # (d): the default model's prior with a linear camera response, so its kernels blur the stored values
            model=KernelField(gammas=[1.0]) if arm == "d" else None,
        )

    def batch(self, step: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(sharp, blurry)`` batch of ``step`` on ``device``, each ``(batch, 3, crop, crop)`` in [0, 1].

        Crops and every random parameter are drawn on the CPU, the blur and noise are applied on ``device``: on
        a GPU the blur costs no CPU time, and the draws are the same on every device.
        """
        b, seed = self.budget, self.budget.seed
        self.photos.set_epoch(step)  # fresh crops and flips at every step
        index = torch.randint(0, len(self.photos), (b.batch,), generator=_seeded(seed, step, "photos"))
        sharp = torch.stack([self.photos[int(i)] for i in index]).to(device)
        if self.kernel_space is not None:
            blurry = self.kernel_space(sharp, generator=_seeded(seed, step, "kernel space"))
        else:
            # kornia draws from the global generator, and its kernel size is shared by a batch: one call per
            # sample, under a per-step seed, makes the draws reproducible.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_seeded(seed, step, "kornia"))))
                blurry = torch.cat([self.motion(s[None]) for s in sharp])
        if self.arm not in ("c", "e"):  # the chain has its own sensor noise
            noise = _seeded(seed, step, "noise")
            sigma = torch.rand(b.batch, 1, 1, 1, generator=noise) * b.noise_max
            blurry = blurry + (sigma * torch.randn(blurry.shape, generator=noise)).to(blurry.device)
        return sharp, (blurry.clamp(0, 1) * 255).round() / 255


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One arm's training: the network, optimiser and schedule, resumed from ``work`` when a checkpoint is there."""

    def __init__(
        self, budget: Budget, arm: str, work: Path, device: torch.device | str = "cpu", photos: Path = DATA / "train"
    ) -> None:
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {', '.join(ARMS)}, got {arm!r}")
        self.budget, self.arm, self.path, self.device = budget, arm, work / f"arm_{arm}.pt", torch.device(device)
        self.photos = photos
        torch.manual_seed(budget.seed)  # the same initial weights in every arm
        self.net = SRNDeblur(budget.width, budget.blocks).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=budget.lr)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / budget.warmup) * 0.5 * (1 + math.cos(math.pi * s / budget.steps)),
        )
        self.record = {"step": 0, "train_seconds": 0.0, "losses": [], "load_1min": [], "budget": asdict(budget)}
        self.data: BlurredPhotos | None = None  # made on the first step: a finished arm needs no photos
        if self.path.exists():
            state = torch.load(self.path, map_location=self.device, weights_only=True)
            if state["record"]["budget"] != asdict(budget):
                raise ValueError(f"{self.path} was trained under another budget ({state['record']['budget']}); "
                                 "give the same options, or another --work folder to start afresh")
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.record = state["record"]

    def advance(self, until: int, save_every: int) -> None:
        """Train up to step ``until`` (at most the budget's steps), checkpointing every ``save_every`` steps."""
        record, until = self.record, min(until, self.budget.steps)
        if record["step"] >= until:
            return
        if self.data is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.data = BlurredPhotos(self.budget, self.arm, self.photos)
            if self.data.kernel_space is not None:
                config = json.loads(json.dumps(self.data.kernel_space.model.config))  # as stored: tuples -> lists
                record.setdefault("kernel_model", config)
                if _blur_settings(record["kernel_model"]) != _blur_settings(config):  # the model changed mid-run
                    raise ValueError(f"{self.path} was trained with another kernel-space model "
                                     f"({record['kernel_model']}); delete it to train this arm again")
        print(f"arm {self.arm} ({ARMS[self.arm]}): step {record['step']} -> {until} of {self.budget.steps}", flush=True)
        self.net.train()
        start, window = time.perf_counter(), []
        for step in range(record["step"], until):
            sharp, blurry = self.data.batch(step, self.device)
            loss = multiscale_loss(self.net(blurry), sharp)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            window.append(loss.item())
            done = step + 1
            if done % save_every == 0 or done == until:
                record["train_seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                record["losses"].append((done, float(np.mean(window))))
                record["load_1min"].append(os.getloadavg()[0])
                record["step"] = done
                _save_atomic({"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "schedule": self.schedule.state_dict(), "record": record}, self.path)
                print(f"  step {done}: loss {np.mean(window):.4f}, {record['train_seconds']:.0f} s", flush=True)
                window = []
        self.net.eval()


def _blur_settings(config: dict) -> dict:
    """A kernel-space model's settings that shape the blurs it samples (the extractor's do not)."""
    return {k: v for k, v in config.items() if k not in _EXTRACTOR_SETTINGS}


_EXTRACTOR_SETTINGS = {"extractor", "fast_iterations", "fast_steps", "iterations", "refine_iterations", "tikhonov"}


def train(
    budget: Budget, arm: str, work: Path, save_every: int, until: int | None = None, device: torch.device | str = "cpu"
) -> tuple[SRNDeblur, dict]:
    """Train (or resume, or just load) one arm up to step ``until`` (default: all of the budget's steps);
    returns the network and its training record."""
    trainer = Trainer(budget, arm, work, device)
    trainer.advance(budget.steps if until is None else until, save_every)
    return trainer.net.eval(), trainer.record


def _read(path: Path, mode: str, side: int | None = None) -> torch.Tensor:
    """A (1, C, H, W) image in [0, 1]; with ``side``, its centre ``side`` x ``side`` crop."""
    arr = np.asarray(Image.open(path).convert(mode), dtype=np.float32) / 255
    t = torch.from_numpy(arr)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    if side is None:
        return t
    top, left = (t.shape[-2] - side) // 2, (t.shape[-1] - side) // 2
    return t[..., top : top + side, left : left + side]


def eval_images() -> list[dict]:
    """The real test pairs: ``{"set", "name", "sharp", "blurry"}`` with (1, C, H, W) tensors."""
    items = []
    for name in ("gopro_pairs6", "kodak24_large_blur"):
        folder = DATA / "eval" / name
        items += [{"set": name, "name": p.stem, "sharp": _read(p, "RGB", EVAL_SIDE),
                   "blurry": _read(folder / "blur" / p.name, "RGB", EVAL_SIDE)}
                  for p in sorted((folder / "sharp").glob("*.png"))]
    levin = DATA / "eval" / "levin2009"
    for path in sorted((levin / "blur").glob("im*_kernel*_img.png")):
        scene = path.name.split("_")[0]
        items.append({"set": "levin2009", "name": path.stem.removesuffix("_img"),
                      "sharp": _read(levin / "gt" / f"{scene}.png", "L"), "blurry": _read(path, "L")})
    return items


def restore(net: SRNDeblur, blurry: torch.Tensor) -> torch.Tensor:
    """The network's estimate (on the CPU); grey images go in as three equal channels and come back averaged."""
    device = next(net.parameters()).device
    if blurry.shape[1] == 1:
        return net.deblur(blurry.expand(-1, 3, -1, -1).to(device)).mean(1, keepdim=True).cpu()
    return net.deblur(blurry.to(device)).cpu()


def score(estimate: torch.Tensor, sharp: torch.Tensor) -> dict[str, float]:
    est, ref = aligned(estimate, sharp)
    return {"psnr": psnr(est, ref), "ssim": ssim(est, ref)}


def evaluate(nets: dict[str, SRNDeblur], work: Path) -> tuple[list[dict], dict]:
    """Per-image scores of the blurry input and of each arm (cached per arm in ``work``), and the estimates
    of the two images the pictures show."""
    scores, shown = [], {}
    cache_path = work / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for item in eval_images():
        key = f"{item['set']}/{item['name']}"
        row = {"set": item["set"], "image": item["name"]}
        estimates = {"blurry": item["blurry"]}
        for arm, net in nets.items():
            estimates[arm] = restore(net, item["blurry"])
        for name, estimate in estimates.items():
            fingerprint = f"{name}:{_weights_digest(nets[name]) if name in nets else 'input'}"
            if cache.get(key, {}).get(name, {}).get("of") != fingerprint:
                cache.setdefault(key, {})[name] = {"of": fingerprint, **score(estimate, item["sharp"])}
            row.update({f"{name}_psnr": cache[key][name]["psnr"], f"{name}_ssim": cache[key][name]["ssim"]})
        scores.append(row)
        if key in PICTURED:
            shown[item["set"]] = {**estimates, "sharp": item["sharp"], "name": item["name"]}
        print(f"  {key}: " + ", ".join(f"{n} {row[f'{n}_psnr']:.2f} dB" for n in estimates), flush=True)
        tmp = cache_path.with_name(cache_path.name + ".part")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    return scores, shown


def _weights_digest(net: SRNDeblur) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode() + tensor.cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def save_pictures(shown: dict, arms: list[str]) -> list[Path]:
    """Side-by-side crops (blurry | arms | sharp) of one image of each set, as small PNGs."""
    written = []
    for name, images in shown.items():
        rows, cols = PICTURED[f"{name}/{images['name']}"]
        order = ["blurry", *arms, "sharp"]
        strip = torch.cat([images[k][0, :, rows, cols] for k in order], -1)
        path = PICTURES / f"{name.split('_')[0]}.png"
        written.append(save_image(strip.clamp(0, 1), path))
    return written


def summarise(scores: list[dict], arms: list[str]) -> tuple[list[dict], dict, dict]:
    """The table's rows, the mean PSNR per set and arm (``{"sets": ...}``), and per set how many images each
    arm restores better than arm (a) does."""
    rows, sets, wins = [], {}, {}
    for name in SETS:
        subset = [s for s in scores if s["set"] == name]
        row = {"set": f"{name} ({len(subset)})"}
        for n in ["blurry", *arms]:
            row[f"{n} PSNR"] = float(np.mean([s[f"{n}_psnr"] for s in subset]))
            row[f"{n} SSIM"] = float(np.mean([s[f"{n}_ssim"] for s in subset]))
        rows.append(row)
        sets[name] = {n: row[f"{n} PSNR"] for n in ["blurry", *arms]}
        if "a" in arms:
            wins[name] = {f"{n} over a": sum(s[f"{n}_psnr"] > s["a_psnr"] for s in subset) for n in arms if n != "a"}
            wins[name]["images"] = len(subset)
    return rows, sets, wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="a,b,c,d",
                        help=f"which arms to train and score: a comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps of each arm")
    parser.add_argument("--crop", type=int, default=Budget.crop, help="side of the square training crops")
    parser.add_argument("--work", type=Path, default=HERE / "runs", help="checkpoints and cached scores")
    parser.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps (the arms take turns)")
    parser.add_argument("--until", type=int, help="train every arm only up to this step for now (then score the "
                        "networks as they are); run again with a larger value, or none, to go on")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when there is one)")
    parser.add_argument("--photos", type=Path, default=DATA / "train",
                        help="the clean training photos (default: ../shared/data/train)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    parser.add_argument("--results", default="augmentation_experiment",
                        help="write benchmarks/results/NAME.json; another name than the default writes no pictures "
                        "(a run of a few arms beside the main one)")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms takes a comma-separated subset of {','.join(ARMS)}, got {args.arms!r}")
    if args.steps < 1 or args.save_every < 1 or (args.until is not None and args.until < 1):
        parser.error(f"--steps, --save-every and --until must be positive, got {args.steps}, {args.save_every} "
                     f"and {args.until}")
    if args.crop < 16:
        parser.error(f"--crop must be at least 16 pixels, got {args.crop}")
    if not all(ch.isalnum() or ch in "_-." for ch in args.results) or args.results.startswith("."):
        parser.error(f"--results takes a file name (letters, digits, _ - .), got {args.results!r}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    args.work.mkdir(parents=True, exist_ok=True)
    budget = Budget(steps=args.steps, crop=args.crop)
    trainers = {arm: Trainer(budget, arm, args.work, device, args.photos) for arm in arms}
    until = min(args.until or budget.steps, budget.steps)
    # The arms take turns, save_every steps each: stopped at any time, they have trained about as long.
    for target in range(args.save_every, until + args.save_every, args.save_every):
        for trainer in trainers.values():
            trainer.advance(min(target, until), args.save_every)
    nets = {arm: t.net for arm, t in trainers.items()}
    records = {arm: t.record for arm, t in trainers.items()}
    if args.no_eval:
        return
    print("scoring on real blur", flush=True)
    start = time.perf_counter()
    scores, shown = evaluate(nets, args.work)
    eval_seconds = time.perf_counter() - start
    pictures = save_pictures(shown, arms) if args.results == "augmentation_experiment" else []
    columns = ["set"] + [f"{n} {m}" for n in ["blurry", *arms] for m in ("PSNR", "SSIM")]
    rows, sets, wins = summarise(scores, arms)
    report(args.results, rows, columns, extra={
        "sets": sets,
        "wins": wins,
        "arms": {arm: ARMS[arm] for arm in arms},
        "budget": asdict(budget),
        "parameters": sum(p.numel() for p in next(iter(nets.values())).parameters()),
        "training": {arm: {k: v for k, v in r.items() if k != "budget"} for arm, r in records.items()},
        "eval_seconds": eval_seconds,
        "eval": f"GoPro and Kodak: centre {EVAL_SIDE}x{EVAL_SIDE} crops; Levin: grey as 3 equal "
                "channels; scored after aligned() (best sub-pixel shift, 15-px crop)",
        "per_image": scores,
        "pictures": [str(p.relative_to(ROOT)) for p in pictures],
    })
    for arm, r in records.items():
        print(f"arm {arm}: {r['step']} steps in {r['train_seconds']:.0f} s, final loss {r['losses'][-1][1]:.4f}")


if __name__ == "__main__":
    main()
