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
