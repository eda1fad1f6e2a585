"""The trainer: learning, resuming after a kill or Ctrl-C, checkpoints without pickle, refused resumes, the run
folder's safety, paired data, torchrun, and the CLI's errors."""

from __future__ import annotations

import hashlib
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
from safetensors import safe_open
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


RESUMABLE = ["--model-config", json.dumps(TINY_FIELD), "--blur", json.dumps(TINY_BLUR), "--crop", "48",
             "--batch-size", "4", "--max-steps", "40", "--checkpoint-every", "5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _step(checkpoint: Path) -> int:
    with safe_open(str(checkpoint), framework="pt") as f:
        return json.loads(f.metadata()["kernelspace_checkpoint"])["step"]


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory) -> Path:
    """The reference run of 40 steps, never interrupted."""
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(_cli(str(photos), str(out), *RESUMABLE, "--log-every", "1"), check=True, env=ENV, timeout=300)
    return out


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _start_and_wait_for_checkpoint(photos: Path, out: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(_cli(str(photos), str(out), *RESUMABLE, *extra), env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def test_killed_run_resumes_to_the_same_weights(photos, uninterrupted, tmp_path):
    killed = tmp_path / "killed"
    proc = _start_and_wait_for_checkpoint(photos, killed, "--log-every", "1")
    deadline = time.monotonic() + 60
    while len((killed / "log.jsonl").read_text().splitlines()) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)  # into the steps after the checkpoint, whose log lines the resumed run must not repeat
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    assert 5 <= _step(killed / "checkpoint.safetensors") < 40
    subprocess.run(_cli(str(photos), str(killed), *RESUMABLE, "--log-every", "1"), check=True, env=ENV, timeout=300)
    assert _same_weights(uninterrupted, killed)
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # every step logged once, none repeated after the resume
    assert sorted(p.name for p in killed.iterdir()) == ["checkpoint.safetensors", "log.jsonl", "model"]  # no temp left


def test_ctrl_c_checkpoints_the_last_finished_step_and_resumes_exactly(photos, uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    proc = _start_and_wait_for_checkpoint(photos, out, "--log-every", "1")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # no process left behind if the run ignored Ctrl-C
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert not (out / "model").exists(), "the run finished before it could be interrupted"
    # The checkpoint claims the step the log last recorded: a finished step, not the one under way.
    last_logged = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert _step(out / "checkpoint.safetensors") == last_logged and 5 <= last_logged < 40
    subprocess.run(_cli(str(photos), str(out), *RESUMABLE, "--log-every", "1"), check=True, env=ENV, timeout=300)
    assert _same_weights(uninterrupted, out)


def test_checkpoint_holds_tensors_in_safetensors_and_the_rest_in_json(uninterrupted):
    checkpoint = uninterrupted / "checkpoint.safetensors"
    with safe_open(str(checkpoint), framework="pt") as f:
        meta = json.loads(f.metadata()["kernelspace_checkpoint"])
        names = list(f.keys())
    assert meta["step"] == 40 and meta["settings"]["lr"] == 1e-3 and meta["model_config"]["latent_dim"] == 8
    assert any(n.startswith("model/") for n in names) and any(n.endswith("/exp_avg") for n in names)
    assert not list(uninterrupted.glob("*.pt"))
    data = checkpoint.read_bytes()
    assert not data.startswith((b"PK", b"\x80"))  # neither torch's zip nor a raw pickle


class _Exploit:
    """Unpickling this runs ``touch MARKER``: what a shared run folder's checkpoint.pt could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_checkpoint_in_the_run_folder_is_never_unpickled(photos, tmp_path, capsys):
    out, marker = tmp_path / "shared_run", tmp_path / "MARKER"
    out.mkdir()
    torch.save({"step": 1, "model_config": {"architecture": "kernel-field"}, "x": _Exploit(marker)}, out / "checkpoint.pt")
    before = {**_hashes(out), **_hashes(photos)}
    assert main(["train", str(photos), str(out), "--max-steps", "1", "--crop", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt" in err and "never loaded" in err and "weights_only=False" not in err
    assert not marker.exists()
    assert {**_hashes(out), **_hashes(photos)} == before


@pytest.mark.parametrize("change, option", [
    (["--lr", "0.5"], "--lr"), (["--seed", "1"], "--seed"), (["--batch-size", "2"], "--batch-size"),
    (["--crop", "40"], "--crop"), (["--model-config", json.dumps({**TINY_FIELD, "vae_width": 4})], "--model-config"),
    (["--model", "bks"], "--model"), (["--blur", json.dumps({"max_extent": 5})], "--blur"), (["DATA"], "DATA"),
])
def test_resuming_with_other_settings_is_refused(photos, tmp_path, capsys, change, option):
    base = {"--model-config": json.dumps(TINY_FIELD), "--blur": json.dumps(TINY_BLUR), "--crop": "32",
            "--batch-size": "4", "--max-steps": "1"}
    assert main(["train", str(photos), str(tmp_path / "run"), *sum(base.items(), ()), "--no-progress"]) == 0
    before = _hashes(tmp_path / "run")
    data = str(photos)
    if change == ["DATA"]:
        data = str(tmp_path / "other")
        shutil.copytree(photos, data)
        change = []
    changed = {**base, **dict(zip(change[::2], change[1::2]))}
    args = ["train", data, str(tmp_path / "run"), *sum(changed.items(), ()), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"made with {option}" in err and "--overwrite" in err, err
    assert _hashes(tmp_path / "run") == before
    if option == "--lr":  # --overwrite starts again with the new settings, and the model card tells the truth
        assert main(args + ["--overwrite"]) == 0
        assert "lr 0.5" in (tmp_path / "run" / "model" / "README.md").read_text()


def test_files_in_out_model_are_never_deleted(photos, tmp_path, capsys):
    mine = tmp_path / "run" / "model"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    shutil.copy(next(photos.iterdir()), mine / "photo.png")
    before = _hashes(tmp_path / "run")
    args = ["train", str(photos), str(tmp_path / "run"), "--model-config", json.dumps(TINY_FIELD), "--crop", "32",
            "--batch-size", "2", "--max-steps", "1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "is not a model folder kernelspace wrote" in err and "notes.txt" in err
    assert main(args + ["--overwrite"]) == 2  # not even when asked to start again
    assert _hashes(tmp_path / "run") == before


def test_the_readme_command_trains_with_the_defaults_and_failures_leave_no_folder(photos, tmp_path, capsys):
    out = tmp_path / "runs" / "mine"
    # The README's `kernelspace train PHOTOS/ runs/mine`, shortened to two small steps.
    assert main(["train", str(photos), str(out), "--max-steps", "2", "--crop", "32", "--batch-size", "2", "--no-progress"]) == 0
    assert load_model(out / "model", device="cpu").config["latent_dim"] == 64
    for args in (["--model-config", '{"latent_dim": 0}'], ["--model-config", '{"psf_size": "7"}']):
        assert main(["train", str(photos), str(tmp_path / "failed"), *args, "--no-progress"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
        assert not (tmp_path / "failed").exists()
    assert main(["train", str(tmp_path / "none"), str(tmp_path / "failed"), "--no-progress"]) == 2
    assert not (tmp_path / "failed").exists()


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
    assert not (tmp_path / "b").exists()


def test_the_extractor_objective_trains_only_a_learned_extractor_added_to_a_loaded_model(photos, tmp_path, capsys):
    # As the shipped model's extractor was trained: a saved model (its kernel space kept) gets a learned extractor
    # (--model-config on a loaded model), and --objective extractor trains that alone.
    source = tmp_path / "source"
    KernelField(**TINY_FIELD).save_pretrained(source)
    args = ["train", str(photos), str(tmp_path / "run"), "--model", str(source), "--model-config",
            '{"encoder_width": 4}', "--objective", "extractor", "--blur", json.dumps(LEARN_BLUR), "--crop", "40",
            "--batch-size", "4", "--max-steps", "60", "--lr", "3e-3", "--log-every", "10", "--no-progress"]
    assert main(args) == 0
    trained, before = load_model(tmp_path / "run" / "model"), load_model(source)
    assert trained.config["encoder_width"] == 4
    kept = before.state_dict()
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in kept.items())  # the kernel space is untouched
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(row.keys() >= {"transfer", "psf_ce", "psf_l1", "response_ce"} for row in log)
    fresh = KernelField(**TINY_FIELD, encoder_width=4)
    assert not torch.equal(trained.kernel_encoder.head.weight, fresh.kernel_encoder.head.weight)  # zero at the start
    assert all(p.requires_grad for p in trained.parameters())
    # Resuming under another objective is refused; so is an objective the model cannot train, or an unknown one.
    assert main([*args[:8], "prior", *args[9:]]) == 2
    assert "made with --objective 'extractor'" in capsys.readouterr().err
    for model_args, message in ((["--model", str(source), "--objective", "extractor"], "no parameters to train for 'extractor'"),
                                (["--objective", "joint"], "objective must be one of 'prior', 'extractor'"),
                                (["--model", str(source), "--model-config", '{"psf_size": 9}'], "may only add parts")):
        assert main(["train", str(photos), str(tmp_path / "failed"), *model_args, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "failed").exists()


def test_the_extractor_objective_fits_a_batch(photos):
    # Its gradients are right: a few Adam steps on one batch of real crops bring their PSFs close to the truth.
    model = KernelField(**TINY_FIELD, encoder_width=8)
    x = torch.stack([PhotoFolder(photos, crop=64, seed=1)[i] for i in range(4)])
    psf = SyntheticBlur(p_nonuniform=0.0, **LEARN_BLUR).sample_params(4, 64, 64, torch.Generator().manual_seed(2)).psf
    optimizer = torch.optim.Adam(model.trainable_parameters("extractor"), lr=3e-3)

    def loss() -> tuple[torch.Tensor, dict]:
        return model.training_loss(x, x, psf, generator=torch.Generator().manual_seed(0), objective="extractor")

    first = loss()[1]
    for _ in range(40):
        optimizer.zero_grad()
        loss()[0].backward()
        optimizer.step()
    last = loss()[1]
    assert last["psf_ce"] < first["psf_ce"] - 1.0 and last["transfer"] < 0.7 * first["transfer"], (first, last)


def test_cli_errors(photos, tmp_path, capsys):
    assert main(["train", str(photos), str(tmp_path), "--model-config", "{latent"]) == 2
    assert "--model-config must be a JSON object" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none"), str(tmp_path / "run"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
@pytest.mark.parametrize("objective", ["prior", "extractor"])
def test_torchrun_two_processes(photos, tmp_path, objective):
    # The extractor's objective freezes the kernel space: DistributedDataParallel must leave it alone.
    config = {**TINY_FIELD, "encoder_width": 4} if objective == "extractor" else TINY_FIELD
    cmd = ["torchrun", "--nproc-per-node", "2", "--master-port", "29517", "-m", "kernelspace.cli", "train", str(photos),
           str(tmp_path), "--model-config", json.dumps(config), "--objective", objective, "--blur",
           json.dumps(TINY_BLUR), "--crop", "32", "--batch-size", "4", "--max-steps", "3", "--device", "cpu",
           "--no-progress"]
    subprocess.run(cmd, check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 writes
    assert ("psf_ce" in (tmp_path / "log.jsonl").read_text()) == (objective == "extractor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_trains_on_cuda(photos, tmp_path):
    cfg = TrainConfig(str(photos), str(tmp_path), crop=32, batch_size=2, max_steps=2, device="cuda", blur=TINY_BLUR)
    model = train(KernelField(**TINY_FIELD), cfg, progress=False)
    assert model.device.type == "cuda" and (tmp_path / "model" / "model.safetensors").is_file()


def test_a_run_folder_in_use_is_refused_with_the_holders_pid(photos, tmp_path, capsys):
    from kernelspace.jobs.outputs import OutputFolder

    with OutputFolder(tmp_path / "run"):  # another run holds the folder
        assert main(["train", str(photos), str(tmp_path / "run"), "--max-steps", "1", "--crop", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in use by another kernelspace run (pid {os.getpid()} " in err
    assert not (tmp_path / "run").exists()  # nothing was written, and the holder's folder is gone with it
