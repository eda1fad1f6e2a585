"""The trainer: learning, resuming after a kill, paired data, torchrun, and the CLI's errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kernelspace import load_model
from kernelspace.data import PhotoFolder, SyntheticBlur
from kernelspace.cli import main
from kernelspace.io import load_image, save_image
from kernelspace.models import BKSNet, KernelField
from kernelspace.training import TrainConfig, train

TINY_FIELD = {"cell": 32, "psf_size": 17, "latent_dim": 8, "vae_width": 8, "prior": "latent"}
TINY_BLUR = {"max_extent": 9, "max_offset": 2}
LEARN_BLUR = {"max_extent": 13, "max_offset": 1, "min_extent": 5}


@pytest.fixture(scope="module")
def photos(shared_data, tmp_path_factory) -> Path:
    """Six real photos, cut to 96x96 so that the tests read them fast."""
    root = tmp_path_factory.mktemp("photos")
    for path in sorted((shared_data / "train" / "cbsd68").glob("*.png"))[:6]:
        save_image(np.asarray(load_image(path).convert("RGB"))[:96, :96], root / path.name)
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kernelspace.cli", "train", *args, "--no-progress"]


def test_kernel_space_learns_and_k_matters(photos, tmp_path):
    cfg = TrainConfig(str(photos), str(tmp_path), crop=48, batch_size=8, lr=3e-3, max_steps=200, log_every=50,
                      blur=LEARN_BLUR)
    model = train(KernelField(**TINY_FIELD), cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [50, 100, 150, 200]
    # On held-out crops and PSFs: the trained kernel space re-blurs far better than an untrained one, and the
    # "does k matter" control (each image re-blurred with another image's PSF) is worse than the right PSF.
    x = torch.stack([PhotoFolder(photos, crop=48, seed=99)[i] for i in range(6)])
    blur = SyntheticBlur(p_nonuniform=0.0, gamma=2.2, **LEARN_BLUR)
    psf = blur.sample_params(6, 48, 48, torch.Generator().manual_seed(5)).psf
    with torch.no_grad():
        trained = model.training_loss(x, x, psf, generator=torch.Generator().manual_seed(0))[1]
        fresh = KernelField(**TINY_FIELD).training_loss(x, x, psf, generator=torch.Generator().manual_seed(0))[1]
    assert trained["charbonnier"] < 0.5 * fresh["charbonnier"]
    assert trained["shuffled"] > 1.05 * trained["charbonnier"]
    # The saved model is what was trained, loadable, and its latent prior was fitted.
    loaded = load_model(tmp_path / "model", device="cpu")
    assert torch.equal(loaded.latent_std, model.latent_std) and not torch.equal(model.latent_std, torch.ones(8))
    assert "steps: 200" in (tmp_path / "model" / "README.md").read_text()
    k = loaded.sample_kernel(64, 64, batch=2, seed=0)
    assert torch.equal(k, loaded.sample_kernel(64, 64, batch=2, seed=0)) and not torch.equal(k[0], k[1])


def test_killed_run_resumes_to_the_same_weights(photos, tmp_path):
    args = [str(photos), "--model-config", json.dumps(TINY_FIELD), "--blur", json.dumps(TINY_BLUR), "--crop", "48",
            "--batch-size", "4", "--max-steps", "40", "--checkpoint-every", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*args[:1], str(tmp_path / "whole"), *args[1:]), check=True, env=env, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args[:1], str(killed), *args[1:]), env=env)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    step = torch.load(killed / "checkpoint.pt", weights_only=False)["step"]
    assert 5 <= step < 40
    subprocess.run(_cli(*args[:1], str(killed), *args[1:]), check=True, env=env, timeout=300)

    whole, resumed = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not list(killed.glob("*.tmp"))


def test_paired_data_trains_the_published_architecture_jointly(shared_data, tmp_path):
    root = tmp_path / "pairs"
    gopro = shared_data / "eval" / "gopro_pairs6"
    for path in sorted((gopro / "sharp").glob("*.png"))[:2]:
        for side in ("sharp", "blur"):
            save_image(np.asarray(load_image(gopro / side / path.name).convert("RGB"))[200:456, 500:756], root / side / path.name)
    model = BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1, use_vae=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(str(root), str(tmp_path / "run"), crop=64, batch_size=2, max_steps=3, log_every=1)
    train(model, cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(row["charbonnier"]) and row["kl"] >= 0 for row in log)
    # F (recon trunk) and G (kernel extractor) both moved: trained jointly.
    after = model.state_dict()
    for prefix in ("kernel_extractor.", "recon_trunk."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_resuming_with_another_model_is_refused(photos, tmp_path):
    cfg = TrainConfig(str(photos), str(tmp_path), crop=32, batch_size=2, max_steps=1, blur=TINY_BLUR)
    train(KernelField(**TINY_FIELD), cfg, progress=False)
    with pytest.raises(ValueError, match="was written for a model with config"):
        train(KernelField(**{**TINY_FIELD, "latent_dim": 4}), cfg, progress=False)
    with pytest.raises(ValueError, match="no parameters to train"):
        train(KernelField(cell=32, psf_size=17), TrainConfig(str(photos), str(tmp_path / "b"), crop=32), progress=False)


def test_cli_errors(photos, tmp_path, capsys):
    assert main(["train", str(photos), str(tmp_path), "--model-config", "{latent"]) == 2
    assert "--model-config must be a JSON object" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none"), str(tmp_path / "run"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_two_processes(photos, tmp_path):
    cmd = ["torchrun", "--nproc-per-node", "2", "--master-port", "29517", "-m", "kernelspace.cli", "train", str(photos),
           str(tmp_path), "--model-config", json.dumps(TINY_FIELD), "--blur", json.dumps(TINY_BLUR), "--crop", "32",
           "--batch-size", "4", "--max-steps", "3", "--device", "cpu", "--no-progress"]
    subprocess.run(cmd, check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 writes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_on_cuda(photos, tmp_path):
    cfg = TrainConfig(str(photos), str(tmp_path), crop=32, batch_size=2, max_steps=2, device="cuda", blur=TINY_BLUR)
    model = train(KernelField(**TINY_FIELD), cfg, progress=False)
    assert model.device.type == "cuda" and (tmp_path / "model" / "model.safetensors").is_file()
