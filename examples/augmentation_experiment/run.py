"""The paper's augmentation experiment at CPU scale: does kernel-space blur help a deblurring network?

    OMP_NUM_THREADS=1 python examples/augmentation_experiment/run.py [--arms a,b] [--steps N] [--work DIR]

Two arms train the same small SRN-Deblur network (``srn.py``) from the same initial weights, with the same
steps, batches, crops, learning-rate schedule and seeds, on clean photos of ../shared/data/train blurred on the
fly; only the blur differs:

- (a) "common augmentation": random crops, flips and 90-degree turns (``PhotoFolder``), then kornia's
  ``RandomMotionBlur`` on every sample (a line of 9 to 31 px, any angle, uneven weight along it);
- (b) the same, but a fixed half of the samples (the same ones at every step in both arms' random streams) is
  blurred by ``KernelSpaceAugment`` (the default model's prior) instead of kornia.

Both arms then add Gaussian noise (sigma uniform in [0, 0.01]) and quantise to 8 bits. Every random draw comes
from a generator seeded by (seed, step, purpose), so the arms see the same crops, the same kornia blurs on the
samples that (b) does not replace, and the same noise; a resumed run is the same as an uninterrupted one.

They are scored on real blur never seen in training: the 6 GoPro pairs (centre 512x512 crops of the 1280x720
frames) and the 32 Levin 2009 images (grey, fed to the network as 3 equal channels, the output averaged back to
grey), PSNR and SSIM after the Levin protocol's alignment (``kernelspace.metrics.aligned``: best sub-pixel shift,
15-px crop), the blurry input's own scores beside them.

Each arm checkpoints to ``--work`` every ``--save-every`` steps (atomically); running the command again
continues where it stopped, and a finished arm is only evaluated. Results: a printed table,
benchmarks/results/augmentation_experiment.json and crops in docs/img/augmentation/.
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

from kernelspace import KernelSpaceAugment
from kernelspace.data import PhotoFolder
from kernelspace.io import save_image
from kernelspace.metrics import aligned, psnr, ssim

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "benchmarks")]
from common import report  # noqa: E402  (benchmarks/common.py: the machine and the results JSON)
from srn import SRNDeblur, multiscale_loss  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PICTURES = ROOT / "docs" / "img" / "augmentation"
ARMS = {"a": "common augmentation", "b": "common + kernel space"}
GOPRO_SIDE = 512  # GoPro frames are scored on their centre crop: the alignment search on full frames is slow
PICTURED = {"GoPro/04": (slice(60, 316), slice(0, 256)), "Levin/im1_kernel2": (slice(15, 240), slice(15, 240))}


@dataclass(frozen=True)
class Budget:
    """Everything that defines a training run; a checkpoint is only resumed under the same budget."""

    steps: int = 800
    batch: int = 8
    crop: int = 112
    lr: float = 5e-4
    seed: int = 0
    width: int = 16
    blocks: int = 1
    motion_min: int = 9
    motion_max: int = 31
    noise_max: float = 0.01
    kernel_space_share: float = 0.5
    pool_size: int = 512


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
        self.kernel_space = (
            KernelSpaceAugment(p=1.0, pool_size=budget.pool_size, pool_seed=budget.seed) if arm == "b" else None
        )

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(sharp, blurry)`` batch of ``step``, each ``(batch, 3, crop, crop)`` in [0, 1]."""
        b, seed = self.budget, self.budget.seed
        self.photos.set_epoch(step)  # fresh crops and flips at every step
        index = torch.randint(0, len(self.photos), (b.batch,), generator=_seeded(seed, step, "photos"))
        sharp = torch.stack([self.photos[int(i)] for i in index])
        # kornia draws from the global generator, and its kernel size is shared by a batch: one call per sample,
        # under a per-step seed, keeps both arms' draws identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_seeded(seed, step, "kornia"))))
            blurry = torch.cat([self.motion(s[None]) for s in sharp])
        if self.kernel_space is not None:
            share = torch.rand(b.batch, generator=_seeded(seed, step, "share"))
            chosen = (share < b.kernel_space_share).nonzero()[:, 0]
            if len(chosen):
                blurry[chosen] = self.kernel_space(sharp[chosen], generator=_seeded(seed, step, "kernel space"))
        noise = _seeded(seed, step, "noise")
        sigma = torch.rand(b.batch, 1, 1, 1, generator=noise) * b.noise_max
        blurry = blurry + sigma * torch.randn(blurry.shape, generator=noise)
        return sharp, (blurry.clamp(0, 1) * 255).round() / 255


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(budget: Budget, arm: str, work: Path, save_every: int) -> tuple[SRNDeblur, dict]:
    """Train (or resume, or just load) one arm; returns the network and its training record."""
    torch.manual_seed(budget.seed)  # the same initial weights in both arms
    net = SRNDeblur(budget.width, budget.blocks)
    optimizer = torch.optim.Adam(net.parameters(), lr=budget.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / budget.steps)))
    record = {"step": 0, "train_seconds": 0.0, "losses": [], "load_1min": [], "budget": asdict(budget)}
    path = work / f"arm_{arm}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["record"]["budget"] != asdict(budget):
            raise ValueError(f"{path} was trained under another budget ({state['record']['budget']}); "
                             "give the same options, or another --work folder to start afresh")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        record = state["record"]
    if record["step"] >= budget.steps:
        return net.eval(), record
    data = BlurredPhotos(budget, arm)
    if data.kernel_space is not None:
        config = json.loads(json.dumps(data.kernel_space.model.config))  # as stored: tuples become lists
        if record.setdefault("kernel_model", config) != config:  # the default model was replaced mid-run
            raise ValueError(f"{path} was trained with another kernel-space model ({record['kernel_model']}); "
                             "delete it to train this arm again with the current one")
    print(f"arm {arm} ({ARMS[arm]}): step {record['step']} of {budget.steps}", flush=True)
    net.train()
    start, window = time.perf_counter(), []
    for step in range(record["step"], budget.steps):
        sharp, blurry = data.batch(step)
        loss = multiscale_loss(net(blurry), sharp)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        window.append(loss.item())
        done = step + 1
        if done % save_every == 0 or done == budget.steps:
            record["train_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            record["losses"].append((done, float(np.mean(window))))
            record["load_1min"].append(os.getloadavg()[0])
            record["step"] = done
            _save_atomic({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                          "schedule": schedule.state_dict(), "record": record}, path)
            print(f"  step {done}: loss {np.mean(window):.4f}, {record['train_seconds']:.0f} s", flush=True)
            window = []
    return net.eval(), record


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
    gopro, levin = DATA / "eval" / "gopro_pairs6", DATA / "eval" / "levin2009"
    items = [{"set": "GoPro", "name": p.stem, "sharp": _read(p, "RGB", GOPRO_SIDE),
              "blurry": _read(gopro / "blur" / p.name, "RGB", GOPRO_SIDE)}
             for p in sorted((gopro / "sharp").glob("*.png"))]
    for path in sorted((levin / "blur").glob("im*_kernel*_img.png")):
        scene = path.name.split("_")[0]
        items.append({"set": "Levin", "name": path.stem.removesuffix("_img"),
                      "sharp": _read(levin / "gt" / f"{scene}.png", "L"), "blurry": _read(path, "L")})
    return items


def restore(net: SRNDeblur, blurry: torch.Tensor) -> torch.Tensor:
    """The network's estimate; grey images go in as three equal channels and come back averaged."""
    if blurry.shape[1] == 1:
        return net.deblur(blurry.expand(-1, 3, -1, -1)).mean(1, keepdim=True)
    return net.deblur(blurry)


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
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


def save_pictures(shown: dict, arms: list[str]) -> list[Path]:
    """Side-by-side crops (blurry | arms | sharp) of one GoPro and one Levin image, as small PNGs."""
    written = []
    for name, images in shown.items():
        rows, cols = PICTURED[f"{name}/{images['name']}"]
        order = ["blurry", *arms, "sharp"]
        strip = torch.cat([images[k][0, :, rows, cols] for k in order], -1)
        path = PICTURES / f"{name.lower()}.png"
        written.append(save_image(strip.clamp(0, 1), path))
    return written


def summarise(scores: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for name in ("GoPro", "Levin"):
        subset = [s for s in scores if s["set"] == name]
        row = {"set": f"{name} ({len(subset)})"}
        for n in ["blurry", *arms]:
            row[f"{n} PSNR"] = float(np.mean([s[f"{n}_psnr"] for s in subset]))
            row[f"{n} SSIM"] = float(np.mean([s[f"{n}_ssim"] for s in subset]))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="a,b", help="which arms to train and score: a, b or a,b")
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps of each arm")
    parser.add_argument("--work", type=Path, default=HERE / "runs", help="checkpoints and cached scores")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        parser.error(f"--arms takes a comma-separated subset of {','.join(ARMS)}, got {args.arms!r}")
    if args.steps < 1 or args.save_every < 1:
        parser.error(f"--steps and --save-every must be positive, got {args.steps} and {args.save_every}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.work.mkdir(parents=True, exist_ok=True)
    budget = Budget(steps=args.steps)
    nets, records = {}, {}
    for arm in arms:
        nets[arm], records[arm] = train(budget, arm, args.work, args.save_every)
    if args.no_eval:
        return
    print("scoring on real blur", flush=True)
    start = time.perf_counter()
    scores, shown = evaluate(nets, args.work)
    eval_seconds = time.perf_counter() - start
    pictures = save_pictures(shown, arms)
    columns = ["set"] + [f"{n} {m}" for n in ["blurry", *arms] for m in ("PSNR", "SSIM")]
    report("augmentation_experiment", summarise(scores, arms), columns, extra={
        "arms": {arm: ARMS[arm] for arm in arms},
        "budget": asdict(budget),
        "parameters": sum(p.numel() for p in next(iter(nets.values())).parameters()),
        "training": {arm: {k: v for k, v in r.items() if k != "budget"} for arm, r in records.items()},
        "eval_seconds": eval_seconds,
        "eval": f"GoPro: centre {GOPRO_SIDE}x{GOPRO_SIDE} crops of the 1280x720 frames; Levin: grey as 3 equal "
                "channels; scored after aligned() (best sub-pixel shift, 15-px crop)",
        "per_image": scores,
        "pictures": [str(p.relative_to(ROOT)) for p in pictures],
    })
    for arm, r in records.items():
        print(f"arm {arm}: {r['step']} steps in {r['train_seconds']:.0f} s, final loss {r['losses'][-1][1]:.4f}")


if __name__ == "__main__":
    main()
