"""`kernelspace deblur` as a folder job: done means same settings and input, files it did not write are never
replaced, broken files do not stop the folder, large images resume tile by tile, one run per output folder,
and logs without escape codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelspace.cli import main
from kernelspace.models import KernelField

from .conftest import DATA, need
from .hooks import pause_before_reading, release

REPO = Path(__file__).resolve().parents[1]


def _error_lines(err: str) -> int:
    """Lines of stderr that are not warnings (a tile of these small crops may warn that it stays blurry)."""
    return sum(1 for line in err.splitlines() if ": warning: " not in line)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 300x400 crop of a real GoPro blurry frame (uint8 RGB)."""
    path = need(DATA / "eval" / "gopro_pairs6" / "blur" / "00.png")
    return np.asarray(Image.open(path).convert("RGB"))[200:500, 400:800]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "small"
    KernelField(cell=64, psf_size=9).save_pretrained(folder)
    return folder


@pytest.fixture
def inputs(tmp_path, crop) -> Path:
    """Two small real images, one in a subfolder."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(crop[:48, :64]).save(root / "a.png")
    Image.fromarray(crop[100:148, 100:164]).save(root / "sub" / "b.png")
    return root


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def deblur(*args: object, model: Path) -> list[str]:
    return ["deblur", *map(str, args), "--model", str(model), "--psf-size", "9", "--no-progress"]


def child(*args: object, hook: str = "") -> list[str]:
    """The CLI in a child process; ``hook`` is Python run first."""
    code = f"import sys\n{hook}\nfrom kernelspace.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_an_image_and_its_kernel_picture_name_are_refused_together(inputs, model_dir, tmp_path, capsys):
    (inputs / "a.kernel.png").write_bytes((inputs / "a.png").read_bytes())  # a.png's --show-kernel output's name
    before = hashes(inputs)
    assert main(deblur(inputs, "-o", tmp_path / "out", "--show-kernel", model=model_dir)) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and "would both be written to" in err and "a.kernel.png" in err
    assert not (tmp_path / "out").exists() and hashes(inputs) == before
    assert main(deblur(inputs, "-o", tmp_path / "out", "--save-kernel", model=model_dir)) == 0  # no picture: no collision
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out" / "a.kernel.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # before: 0600


def test_done_means_the_same_settings_and_input(inputs, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(deblur(inputs, "-o", out, model=model_dir)) == 0
    first = hashes(out)
    entries = [json.loads(line) for line in (out / "deblur_manifest.jsonl").read_text().splitlines()]
    assert sorted(e["output"] for e in entries) == ["a.png", "sub/b.png"]
    assert all(e["settings"]["gamma"] == 1.0 and len(e["input_sha256"]) == 64 for e in entries)

    assert main(deblur(inputs, "-o", out, "--gamma", "2.2", model=model_dir)) == 2  # other settings: not "done"
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and "other settings" in err and "--overwrite" in err
    assert hashes(out) == first
    assert main(deblur(inputs, "-o", out, "--gamma", "2.2", "--overwrite", model=model_dir)) == 0
    assert "wrote 2 image(s)" in capsys.readouterr().out
    redone = hashes(out)
    assert redone["a.png"] != first["a.png"]
    lines = [json.loads(line) for line in (out / "deblur_manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {e["settings"]["gamma"] for e in lines} == {2.2}  # one line per output
    assert main(deblur(inputs, "-o", out, "--gamma", "2.2", model=model_dir)) == 0
    assert "wrote 0 image(s)" in capsys.readouterr().out and hashes(out) == redone

    Image.fromarray(np.asarray(Image.open(inputs / "a.png"))[::-1].copy()).save(inputs / "a.png")  # the input changed
    assert main(deblur(inputs, "-o", out, "--gamma", "2.2", model=model_dir)) == 2
    assert "other input files" in capsys.readouterr().err


def test_a_file_kernelspace_did_not_write_is_never_replaced(inputs, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes((inputs / "sub" / "b.png").read_bytes())  # e.g. the ground truth of the same name
    before = hashes(out)
    for extra in ([], ["--overwrite"]):
        assert main(deblur(inputs, "-o", out, *extra, model=model_dir)) == 2
        err = capsys.readouterr().err
        assert _error_lines(err) == 1 and "did not write it" in err and "a.png" in err
        assert hashes(out) == before


def test_a_link_inside_the_output_folder_is_not_followed(inputs, model_dir, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "sub")  # sub/b.png would land in elsewhere/
    assert main(deblur(inputs, "-o", out, model=model_dir)) == 2
    assert "outside the output folder" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_broken_files_are_reported_and_the_others_deblurred(inputs, model_dir, tmp_path, capsys):
    Image.new("RGB", (1, 1)).save(inputs / "tiny.png")
    (inputs / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    assert main(deblur(inputs, "-o", out, model=model_dir)) == 1
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if line.startswith("kernelspace deblur: error:")]
    assert len(failures) == 2 and any("notes.png" in f for f in failures) and any("tiny.png" in f for f in failures)
    assert "wrote 2 image(s)" in captured.out
    assert (out / "a.png").is_file() and (out / "sub" / "b.png").is_file()
    assert not (out / "tiny.png").exists() and not (out / "notes.png").exists()

    assert main(deblur(inputs, "-o", tmp_path / "strict", "--no-skip-errors", model=model_dir)) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and "notes.png" in err


def test_a_large_image_resumes_tile_by_tile(crop, model_dir, tmp_path):
    Image.fromarray(crop).save(tmp_path / "large.png")  # 300x400 in 160-px tiles: 12 tiles
    args = deblur(tmp_path / "large.png", "-o", tmp_path / "{}", "--tile", "160", model=model_dir)
    whole = subprocess.run(child(*[a.format("whole") for a in args]), env=ENV, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "resumed"
    proc = subprocess.Popen(child(*[a.format("resumed") for a in args]), env=ENV)
    deadline = time.monotonic() + 120
    while len(list(out.glob(".kernelspace-tiles/*/*.safetensors"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(out.glob(".kernelspace-tiles/*/*.safetensors")))
    assert 3 <= kept < 12 and not (out / "large.png").exists()
    count_tiles = """
import kernelspace.deblur.blind as blind
real, calls = blind.BlindDeblurrer._deblur_tile, []
def counted(self, *a, **k):
    calls.append(1)
    return real(self, *a, **k)
blind.BlindDeblurrer._deblur_tile = counted
import atexit
atexit.register(lambda: print("tiles computed:", len(calls)))
"""
    resumed = subprocess.run(child(*[a.format("resumed") for a in args], hook=count_tiles), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"tiles computed: {12 - kept}" in resumed.stdout
    assert (out / "large.png").read_bytes() == (tmp_path / "whole" / "large.png").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["deblur_manifest.jsonl", "large.png"]  # tiles and temp gone


WAIT_FOR_GO = pause_before_reading("kernelspace.jobs.deblur_files")


def test_a_second_run_on_the_same_output_refuses_with_the_holders_pid(inputs, model_dir, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(child(*deblur(inputs, "-o", out, model=model_dir), tmp_path, hook=WAIT_FOR_GO),
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "STARTED").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before it held the folder"
        second = subprocess.run(child(*deblur(inputs, "-o", out, model=model_dir)), env=ENV, capture_output=True,
                                text=True, timeout=300)
    finally:
        _, first_err = release(first, tmp_path)
    assert second.returncode == 2 and _error_lines(second.stderr) == 1
    assert f"is in use by another kernelspace run (pid {first.pid} " in second.stderr
    assert first.returncode == 0, first_err
    lines = (out / "deblur_manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len({json.loads(line)["output"] for line in lines}) == 2


def test_progress_bars_leave_no_escape_codes_in_a_log_file(inputs, model_dir, tmp_path):
    args = [a for a in deblur(inputs, "-o", tmp_path / "out", model=model_dir) if a != "--no-progress"]
    with open(tmp_path / "log.txt", "w") as log:
        run = subprocess.run(child(*args), env=ENV, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert run.returncode == 0, text
    assert "\x1b" not in text and "\r" not in text and "wrote 2 image(s)" in text


def test_phone_photos_and_16_bit_files_come_out_upright_at_their_depth(tmp_path, crop, model_dir):
    """A portrait JPEG (EXIF orientation 6) comes out upright with its EXIF, at the asked JPEG quality; a 16-bit
    colour PNG comes out as 16-bit PNG."""
    root = tmp_path / "in"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "kernelspace-test"  # orientation: rotate 90 degrees clockwise; make
    Image.fromarray(crop[:48, :64]).save(root / "phone.jpg", quality=95, exif=exif)  # stored landscape
    deep = (crop[60:108, :64].astype(np.uint16) * 257 + np.arange(64, dtype=np.uint16)[None, :, None])
    from kernelspace.io import save_image

    save_image(deep, root / "deep.png")
    before = hashes(root)
    assert main(deblur(root, "-o", tmp_path / "out", "--jpeg-quality", "80", model=model_dir)) == 0
    with Image.open(tmp_path / "out" / "phone.jpg") as out:
        assert out.size == (48, 64)  # upright: portrait
        assert out.getexif().get(0x0112, 1) == 1 and out.getexif()[0x010F] == "kernelspace-test"
        reference = io.BytesIO()
        Image.fromarray(crop[:64, :48]).save(reference, format="JPEG", quality=80)
        assert out.quantization == Image.open(reference).quantization  # written at quality 80, not 95
    from kernelspace.io import load_image

    result = load_image(tmp_path / "out" / "deep.png")
    assert isinstance(result, np.ndarray) and result.dtype == np.uint16 and result.shape == (48, 64, 3)
    assert len(np.unique(result)) > 256  # more levels than 8 bits hold
    entries = [json.loads(line) for line in (tmp_path / "out" / "deblur_manifest.jsonl").read_text().splitlines()]
    assert {e["settings"]["jpeg_quality"] for e in entries} == {80}
    assert hashes(root) == before


def test_relative_paths_as_the_readme_writes_them(inputs, model_dir, tmp_path, monkeypatch, capsys):
    """`kernelspace deblur photos/ -o sharp/` from the working folder (before: the manifest was looked for in
    sharp/sharp/ and the run failed)."""
    monkeypatch.chdir(tmp_path)
    assert main(deblur("in/", "-o", "sharp/", model=model_dir)) == 0
    assert sorted(hashes(tmp_path / "sharp")) == ["a.png", "deblur_manifest.jsonl", "sub/b.png"]
    assert main(deblur("in/", "-o", "sharp/", model=model_dir)) == 0
    assert "wrote 0 image(s) to sharp/, 2 already done" in capsys.readouterr().out


def test_max_sharpening_help_states_the_default(capsys):
    from kernelspace.deblur.blind import DEFAULT_MAX_SHARPENING

    with pytest.raises(SystemExit):
        main(["deblur", "--help"])
    assert f"default {DEFAULT_MAX_SHARPENING};" in " ".join(capsys.readouterr().out.split())
