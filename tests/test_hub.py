"""Weights: published .pth -> convert -> from_pretrained, lone .safetensors, an offline Hub cache, clear errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kernelspace
from kernelspace import ModelNotFoundError, convert_checkpoint, load_model
from kernelspace.cli import main as cli_main
from kernelspace.metrics import aligned, psnr
from kernelspace.models import BKSNet


@pytest.fixture(scope="module")
def published_pth(golden, tmp_path_factory) -> Path:
    """The VAE golden state dict saved the way the published code saves checkpoints (a plain state dict)."""
    path = tmp_path_factory.mktemp("ckpt") / "GOPRO_wVAE_tiny.pth"
    torch.save(golden["tiny_vae"]["state"], path)
    return path


def _check_golden(model, vectors):
    x, y = vectors["x_sharp"], vectors["y_blur"]
    torch.testing.assert_close(model.extract_kernel(x, y), vectors["kernel"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.apply_kernel(x, vectors["kernel"]), vectors["y_hat"], atol=1e-5, rtol=0)


def test_pth_convert_from_pretrained_roundtrip(golden, published_pth, tmp_path):
    _check_golden(load_model(published_pth, device="cpu"), golden["tiny_vae"])
    out = convert_checkpoint(published_pth, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = BKSNet.from_pretrained(out)
    assert model.use_vae and model.nf == 8
    _check_golden(model, golden["tiny_vae"])
    _check_golden(load_model(out / "model.safetensors", device="cpu"), golden["tiny_vae"])  # config in metadata
    assert model.state_dict().keys() == golden["tiny_vae"]["state"].keys()  # key for key


def test_nested_and_dataparallel_checkpoints_load(golden, tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"params": {f"module.{k}": v for k, v in golden["tiny"]["state"].items()}}, path)
    _check_golden(load_model(path, device="cpu"), golden["tiny"])


def test_convert_refuses_to_overwrite(published_pth, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        convert_checkpoint(published_pth, tmp_path / "taken")
    with pytest.raises(ValueError, match="holds the input checkpoint"):
        convert_checkpoint(published_pth, published_pth.parent, overwrite=True)
    assert published_pth.is_file()


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    """Lay ``folder`` out as huggingface_hub's cache does: blobs by hash, snapshots of links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)


def _run_offline(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_offline_hub_cache(golden, published_pth, tmp_path):
    convert_checkpoint(published_pth, tmp_path / "folder")
    cache = tmp_path / "hub"
    _populate_hub_cache(cache, "kernelspace/bks-tiny", tmp_path / "folder")
    code = (
        "import kernelspace, torch, sys\n"
        "m = kernelspace.load_model('kernelspace/bks-tiny', device='cpu')\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "print(type(m).__name__, m.use_vae, float(m.extract_kernel(x, x).abs().sum()))\n"
    )
    torch.save(golden["tiny_vae"]["x_sharp"], tmp_path / "x.pt")
    run = _run_offline(code, cache)
    assert run.returncode == 0, run.stderr
    expected = load_model(tmp_path / "folder", device="cpu").extract_kernel(*(golden["tiny_vae"]["x_sharp"],) * 2)
    name, vae, total = run.stdout.split()
    assert (name, vae) == ("BKSNet", "True")
    assert float(total) == pytest.approx(float(expected.abs().sum()), rel=1e-5)


def test_uncached_repo_offline_names_repo_and_ways_out(tmp_path):
    run = _run_offline("import kernelspace; kernelspace.load_model('kernelspace/not-cached', device='cpu')", tmp_path)
    assert run.returncode != 0
    assert "ModelNotFoundError" in run.stderr and "'kernelspace/not-cached'" in run.stderr
    assert "HF_HUB_OFFLINE" in run.stderr and "local path" in run.stderr


def test_bad_sources(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(tmp_path / "nope" / "deeper", device="cpu")
    with pytest.raises(ModelNotFoundError, match="missing config.json, model.safetensors"):
        load_model(tmp_path, device="cpu")
    junk = tmp_path / "junk.pth"
    torch.save({"conv.weight": torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        load_model(junk, device="cpu")
    with pytest.raises(ValueError, match="unknown weights format"):
        load_model(Path(__file__), device="cpu")


def test_default_model_ships_in_the_package(shared_data):
    folder = kernelspace.hub.DEFAULT_MODEL_DIR
    assert (folder / "model.safetensors").stat().st_size <= 20e6
    card = (folder / "README.md").read_text()
    assert "## Training" in card and "## Figures" in card and "kernelspace train" in card
    model = load_model(device="cpu")
    assert isinstance(model, kernelspace.KernelField) and model.config["latent_dim"] == 64
    # Its learned kernel space expresses a real recorded kernel: Levin's kernel 1, encoded and decoded, re-blurs
    # the sharp image close to the real blurry one (the recorded kernel itself: 44.5 dB; a delta: 25 dB).
    root = shared_data / "eval" / "levin2009"
    psf = torch.from_numpy(np.load(root / "kernels" / "levin09_kernel1.npy")).float()
    sharp = np.asarray(Image.open(root / "gt" / "im1.png").convert("L"))
    blurry = torch.from_numpy(np.asarray(Image.open(root / "blur" / "im1_kernel1_img.png").convert("L")) / 255.0)
    field = model.fit_canvas(psf[None])[:, None, None].expand(1, *model.kernel_size_for(255, 255), -1, -1)
    with torch.no_grad():
        decoded = model.decode_kernel(model.encode_kernel(model.pack(field, torch.ones(1))), 1.0)
    out = torch.from_numpy(model.apply_kernel(sharp, decoded) / 255.0)
    assert psnr(*aligned(out[None, None].float(), blurry[None, None].float())) > 37.0


def test_cli_info_and_convert(published_pth, tmp_path, capsys):
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"kernelspace {kernelspace.__version__}" in out and "bks (BKSNet)" in out and "torch" in out
    assert cli_main(["convert", str(published_pth), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli_main(["convert", str(published_pth), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_entry_point_help():
    run = subprocess.run([sys.executable, "-m", "kernelspace.cli", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "convert" in run.stdout and "info" in run.stdout


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_convert_overwrite_only_replaces_a_model_folder(published_pth, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "photo.png").write_bytes(b"\x89PNG not really")
    before = _tree(work)
    monkeypatch.chdir(work)
    assert cli_main(["convert", str(published_pth), ".", "--overwrite"]) == 2  # before: emptied the folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a model folder kernelspace wrote" in err and "notes.txt" in err
    assert _tree(work) == before and sorted(p.name for p in work.iterdir()) == ["notes.txt", "photo.png"]
    # A folder an earlier conversion wrote is replaced, and gets the permissions mkdir and open() give.
    assert cli_main(["convert", str(published_pth), "model"]) == 0
    stale = (work / "model" / "model.safetensors").read_bytes()
    (work / "model" / "model.safetensors").write_bytes(stale[:100])
    assert cli_main(["convert", str(published_pth), "model", "--overwrite"]) == 0
    assert (work / "model" / "model.safetensors").read_bytes() == stale
    umask = os.umask(0o022)
    os.umask(umask)
    assert (work / "model").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (work / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # before: 0600
    assert sorted(p.name for p in work.iterdir()) == ["model", "notes.txt", "photo.png"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_object_in_a_checkpoint_never_runs(tmp_path):
    evil, marker = tmp_path / "GOPRO_wVAE.pth", tmp_path / "MARKER"
    torch.save({"params": {"conv.weight": torch.zeros(1)}, "x": _Exploit(marker)}, evil)
    with pytest.raises(ValueError, match="never unpickles") as err:
        load_model(evil, device="cpu")
    assert "weights_only=False" not in str(err.value) and "posix.system" in str(err.value)
    assert not marker.exists()
    (tmp_path / "cut.pth").write_bytes(evil.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "cut.pth", device="cpu")


@pytest.mark.parametrize("config, message", [
    ('{"architecture": "bks", "front_RBs": 100000}', "front_RBs must be an integer from 0 to 100"),
    ('{"architecture": "bks", "front_RBs": 10000000}', "front_RBs must be an integer from 0 to 100"),
    ('{"architecture": "kernel-field", "psf_size": 100001}', "psf_size must be an integer from 1 to 255"),
    ('{"architecture": "kernel-field", "iterations": 1000000000000}', "iterations must be an integer"),
    ('{"architecture": "kernel-field", "psf_size": "7"}', "psf_size must be an integer from 1 to 255, got '7'"),
    ('{"architecture": "kernel-field", "cell": 16, "psf_size": 7, "colour": 1}', "unexpected keyword"),
    ('{"architecture": "bks", "nf": 8, "front_RBs": 2, "back_RBs": 1, "kernel_dim": 16, "n_blocks": 1}',
     "the weights do not match the config"),
    ("[1, 2]", "got a list"),
    ("[" * 100000 + "]" * 100000, "invalid JSON"),
])
def test_a_hostile_config_is_refused_before_anything_is_allocated(tmp_path, config, message):
    import time

    folder = tmp_path / "model"
    BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1).save_pretrained(folder)
    (folder / "config.json").write_text(config)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as err:
        load_model(folder, device="cpu")
    assert time.perf_counter() - start < 5 and "config.json" in str(err.value)  # before: 150 s and 2.6 GB, or OOM


def test_a_corrupt_weights_file_is_one_clear_error(tmp_path, capsys):
    folder = tmp_path / "model"
    BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=16, n_blocks=1).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(folder, device="cpu")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(folder / "model.safetensors", device="cpu")


def test_save_pretrained_is_byte_reproducible_across_processes(tmp_path):
    code = ("import sys, torch; torch.manual_seed(0)\n"
            "from kernelspace.models import KernelField\n"
            "KernelField(cell=32, psf_size=9, latent_dim=4, vae_width=4).save_pretrained(sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for i in range(3):  # safetensors orders its metadata by a per-process hash: different bytes before
        subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], check=True, env=env, timeout=120)
    files = {(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(3)}
    assert len(files) == 1
    assert load_model(tmp_path / "0", device="cpu").config["latent_dim"] == 4
