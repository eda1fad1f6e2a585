"""Every CLI error is one line, `kernelspace COMMAND: error: ...`, naming the file and what to do: file-system
refusals, a file too large to write, memory running out, corrupt files and oversized images, on real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelspace.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def child(*args: object, hook: str) -> subprocess.CompletedProcess:
    code = f"import sys\n{hook}\nfrom kernelspace.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def photos(photo, tmp_path) -> Path:
    """Two crops of a real photo."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(photo[:64, :80]).save(root / "a.png")
    Image.fromarray(photo[64:128, 80:160]).save(root / "b.png")
    return root


def one_error_line(stderr: str, command: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kernelspace {command}: error: "), stderr
    return lines[0]


def test_a_folder_the_system_refuses_is_one_line(photos, capsys):
    try:
        os.mkdir("/sys/kernelspace-test")
    except PermissionError:
        pass
    except OSError as err:
        pytest.skip(f"/sys refuses new folders with {err.strerror}, not a permission error")
    else:
        os.rmdir("/sys/kernelspace-test")
        pytest.skip("/sys accepts new folders here")
    assert main(["deblur", str(photos), "-o", "/sys/kernelspace-test/out", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err, "deblur")
    assert "/sys/kernelspace-test" in line and "choose a folder you can write to" in line


NO_BIG_FILES = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
"""


def test_a_write_that_fails_is_one_line_and_leaves_no_partial_file(photos, tmp_path):
    out = tmp_path / "out"
    run = child("deblur", photos, "-o", out, "--psf-size", "9", "--no-progress", hook=NO_BIG_FILES)
    assert run.returncode == 2
    line = one_error_line(run.stderr, "deblur")
    assert f"{out / 'a.png'}: File too large" in line
    assert sorted(p.name for p in out.iterdir()) == ["deblur_manifest.jsonl"]  # no half image, no temporary file


LITTLE_MEMORY = """
import resource, kernelspace.training
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to size the memory limit")
def test_running_out_of_memory_is_one_line_and_leaves_no_run_folder(photos, tmp_path):
    out = tmp_path / "run"
    run = child("train", photos, out, "--crop", "128", "--batch-size", "512", "--max-steps", "1", "--no-progress",
                hook=LITTLE_MEMORY)
    assert run.returncode == 2
    assert "not enough memory" in one_error_line(run.stderr, "train") and "--batch-size" in run.stderr
    assert not out.exists()


def test_a_corrupt_checkpoint_is_one_line(photos, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", str(photos), str(out), "--model-config", '{"cell": 32, "psf_size": 9, "latent_dim": 4, "vae_width": 4}',
            "--crop", "32", "--batch-size", "2", "--max-steps", "1", "--no-progress"]
    assert main(args) == 0
    data = (out / "checkpoint.safetensors").read_bytes()
    (out / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])  # cut short, as a full disk would
    assert main(args + ["--max-steps", "2"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert "checkpoint.safetensors is not a readable kernelspace checkpoint" in line and "--overwrite" in line


def test_an_image_over_the_decompression_bomb_limit_fails_alone(photos, tmp_path, capsys):
    Image.new("1", (20000, 20000)).save(photos / "huge.png")  # 400 megapixels in a few kilobytes
    assert (photos / "huge.png").stat().st_size < 200_000
    out = tmp_path / "out"
    assert main(["deblur", str(photos), "-o", str(out), "--psf-size", "9", "--no-progress"]) == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(failures) == 1 and "huge.png" in failures[0]
    assert (out / "a.png").is_file() and (out / "b.png").is_file() and not (out / "huge.png").exists()


def test_missing_inputs_and_bad_options_are_one_line(tmp_path, capsys):
    for args in (["deblur", str(tmp_path / "none.png"), "-o", str(tmp_path / "o")],
                 ["swap", str(tmp_path / "none"), str(tmp_path / "o"), "--shard", "3/2"],
                 ["convert", str(tmp_path / "none.pth"), str(tmp_path / "o")],
                 ["train", str(tmp_path), str(tmp_path / "run"), "--blur", "[1]"]):
        assert main(args + ["--no-progress"] * (args[0] != "convert")) == 2
        one_error_line(capsys.readouterr().err, args[0])
