"""Blur-swapped datasets: same layout out, a manifest per file, resumable after a kill, shards, inputs untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kernelspace.cli import main
from kernelspace.data.folders import find_pairs
from kernelspace.models import KernelField
from kernelspace.jobs.swap import parse_shard, swap_dataset

from .conftest import DATA, need
from .hooks import pause_before_reading, release

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GOPRO-layout dataset of two sequences, three real pairs each: 96x128 crops of the six GoPro pairs."""
    source = need(DATA / "eval" / "gopro_pairs6")
    root = tmp_path_factory.mktemp("gopro") / "GOPRO"
    for i, path in enumerate(sorted((source / "sharp").glob("*.png"))):
        seq = root / ("GOPR0001_00" if i < 3 else "GOPR0002_00")
        for side, folder in (("sharp", source / "sharp"), ("blur", source / "blur")):
            (seq / side).mkdir(parents=True, exist_ok=True)
            Image.open(folder / path.name).convert("RGB").crop((600, 300, 728, 396)).save(seq / side / f"{i:06d}.png")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A small kernel field: extraction takes about a second per pair instead of several.
    folder = tmp_path_factory.mktemp("model") / "small"
    KernelField(cell=64, psf_size=17, iterations=30).save_pretrained(folder)
    return folder


def hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli(*args: object, hook: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a child process; ``hook`` is Python run first (e.g. to kill the child mid-way)."""
    code = f"import sys\n{hook}\nfrom kernelspace.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# Kill the process right after the third synthetic image is listed in the manifest, before it is moved into place:
# the worst moment, as a power cut would choose it.
KILL_AFTER_THIRD_LINE = """
import os, signal
import kernelspace.jobs.swap as swap
real_append, written = swap.append_line, []
def append_then_die(log, entry):
    real_append(log, entry)
    written.append(entry)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
swap.append_line = append_then_die
"""


def test_killed_run_resumes_to_the_uninterrupted_result(dataset: Path, model_dir: Path, tmp_path: Path) -> None:
    before = hashes(dataset)
    options = ["--model", model_dir, "--pairs", "2", "--seed", "7", "--no-progress", "--device", "cpu"]
    full = cli("swap", dataset, tmp_path / "full", *options)
    assert full.returncode == 0, full.stderr
    killed = cli("swap", dataset, tmp_path / "resumed", *options, hook=KILL_AFTER_THIRD_LINE)
    assert killed.returncode == -9
    lines = (tmp_path / "resumed" / "swap_manifest.jsonl").read_text().splitlines()
    assert len(lines) == 3 and not (tmp_path / "resumed" / json.loads(lines[2])["output"]).exists()
    # What a kill leaves: the run's temporary files, and (from earlier versions) a part file beside an output.
    assert list((tmp_path / "resumed" / ".kernelspace-tmp").rglob("*.png"))
    (tmp_path / "resumed" / "GOPR0001_00" / "blur" / ".000002.png.k1ll3d.part").write_bytes(b"half an image")
    resumed = cli("swap", dataset, tmp_path / "resumed", *options)
    assert resumed.returncode == 0, resumed.stderr
    assert "wrote 4, 2 already done" in resumed.stdout
    # Images and manifest byte for byte, and no temporary file left behind.
    assert hashes(tmp_path / "resumed") == hashes(tmp_path / "full")
    assert hashes(dataset) == before  # the input is only read
    # Same layout out; blurry images replaced, sharp ones copied.
    layout, pairs = find_pairs(tmp_path / "full")
    assert layout == "gopro" and [p.key for p in pairs] == [p.key for p in find_pairs(dataset)[1]]
    for pair in pairs:
        original = dataset / pair.blurry_rel
        assert pair.sharp.read_bytes() == (dataset / pair.sharp_rel).read_bytes()
        assert pair.blurry.read_bytes() != original.read_bytes()
    # Every output is described: its sharp input, a real source pair other than its own, the crop, the model.
    entries = [json.loads(line) for line in (tmp_path / "full" / "swap_manifest.jsonl").read_text().splitlines()]
    assert sorted(e["output"] for e in entries) == sorted(str(p.blurry_rel) for p in pairs)
    for e in entries:
        assert e["kernel"]["kind"] == "pair" and e["kernel"]["key"] != e["key"]
        assert e["kernel"]["crop"] == [0, 0, 96, 128]  # the whole 96x128 image: smaller than --extract-crop
        assert e["settings"]["model"]["architecture"] == "kernel-field" and e["sharp"].endswith(Path(e["output"]).name)
    assert len({e["kernel"]["key"] for e in entries}) == 2  # two source pairs, each extracted once


def test_shards_cover_every_pair_exactly_once(dataset: Path, tmp_path: Path) -> None:
    model = KernelField(cell=64, psf_size=17)
    whole = swap_dataset(dataset, tmp_path / "whole", source="prior", model=model, progress=False)
    assert (whole.written, whole.skipped) == (6, 0)
    for i in range(3):
        part = swap_dataset(dataset, tmp_path / "sharded", source="prior", model=model, shard=(i, 3), progress=False)
        assert part.total == 2
    outputs = []
    for i in range(3):
        lines = (tmp_path / "sharded" / f"swap_manifest.shard-{i}-of-3.jsonl").read_text().splitlines()
        outputs += [json.loads(line)["output"] for line in lines]
    lines = (tmp_path / "whole" / "swap_manifest.jsonl").read_text().splitlines()
    assert sorted(outputs) == sorted(json.loads(line)["output"] for line in lines)
    assert len(set(outputs)) == 6
    images = {k: v for k, v in hashes(tmp_path / "whole").items() if k.endswith(".png")}
    assert {k: v for k, v in hashes(tmp_path / "sharded").items() if k.endswith(".png")} == images
    # A finished shard layout counts as done for an unsharded rerun, which then writes nothing.
    again = swap_dataset(dataset, tmp_path / "sharded", source="prior", model=model, progress=False)
    assert (again.written, again.skipped) == (0, 6)


def test_both_sources_links_and_prior_seeds(dataset: Path, tmp_path: Path) -> None:
    model = KernelField(cell=64, psf_size=17, iterations=30)
    swap_dataset(dataset, tmp_path / "out", source="both", model=model, pairs=1, link=True, progress=False)
    entries = [json.loads(line) for line in (tmp_path / "out" / "swap_manifest.jsonl").read_text().splitlines()]
    kinds = {e["kernel"]["kind"] for e in entries}
    assert kinds == {"pair", "prior"}
    for e in entries:
        assert os.path.samefile(tmp_path / "out" / e["sharp"], dataset / e["sharp"])  # hard links
    # A prior entry regenerates from its seed alone.
    prior = next(e for e in entries if e["kernel"]["kind"] == "prior")
    sharp = Image.open(dataset / prior["sharp"])
    k = model.sample_kernel(sharp.height, sharp.width, generator=torch.Generator().manual_seed(prior["kernel"]["seed"]))
    written = np.asarray(Image.open(tmp_path / "out" / prior["output"]))
    assert np.array_equal(np.asarray(model.apply_kernel(sharp, k)), written)


def test_extraction_batches_give_the_kernels_of_one_pair_at_a_time(dataset: Path, tmp_path: Path) -> None:
    # Three source pairs in batches of two: one full batch, then the remainder.
    model = KernelField(cell=64, psf_size=17, iterations=30)
    images = []
    for batch in (1, 2):
        out = tmp_path / f"batch{batch}"
        swap_dataset(dataset, out, model=model, pairs=3, batch=batch, progress=False)
        entries = [json.loads(line) for line in (out / "swap_manifest.jsonl").read_text().splitlines()]
        assert len({e["kernel"]["key"] for e in entries}) == 3
        images.append({e["output"]: np.asarray(Image.open(out / e["output"]), dtype=np.int16) for e in entries})
    assert images[0].keys() == images[1].keys()
    for name, image in images[0].items():
        assert np.abs(image - images[1][name]).max() <= 1  # float rounding of the batch, at most one 8-bit level


def test_refuses_to_write_inside_the_input_or_to_mix_settings(dataset: Path, tmp_path: Path, capsys) -> None:
    model = KernelField(cell=64, psf_size=17)
    with pytest.raises(ValueError, match="outside the input folder"):
        swap_dataset(dataset, dataset / "swapped", model=model)
    with pytest.raises(ValueError, match="outside the input folder"):
        swap_dataset(dataset / "GOPR0001_00", dataset.parent, model=model)
    assert main(["swap", str(dataset), str(dataset), "--no-progress"]) == 2
    assert "outside the input folder" in capsys.readouterr().err
    swap_dataset(dataset, tmp_path / "out", source="prior", model=model, shard=(0, 3), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        swap_dataset(dataset, tmp_path / "out", source="prior", seed=1, model=model, progress=False)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("3/3")
    with pytest.raises(ValueError, match="source must be"):
        swap_dataset(dataset, tmp_path / "x", source="real", model=model)


def test_a_linked_subfolder_of_the_output_never_lets_the_input_be_written(dataset: Path, tmp_path: Path) -> None:
    before = hashes(dataset)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(dataset / "GOPR0001_00", out / "GOPR0001_00")  # the output's subfolder is the input's
    run = cli("swap", dataset, out, "--source", "prior", "--model", REPO / "kernelspace" / "weights" / "default",
              "--no-progress", "--device", "cpu")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "outside the output folder" in run.stderr and "GOPR0001_00" in run.stderr
    assert hashes(dataset) == before  # before: the real blurry inputs were overwritten, exit 0, "wrote 6"


def test_more_source_pairs_than_the_dataset_has_warns_and_records_the_real_number(dataset: Path, model_dir: Path,
                                                                                  tmp_path: Path) -> None:
    run = cli("swap", dataset, tmp_path / "out", "--pairs", "8", "--model", model_dir, "--no-progress", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "kernelspace swap: warning:" in run.stderr and "6 pairs, fewer than pairs=8" in run.stderr
    assert "blur from 6 source pair(s)" in run.stdout
    entries = [json.loads(line) for line in (tmp_path / "out" / "swap_manifest.jsonl").read_text().splitlines()]
    assert {e["settings"]["pairs"] for e in entries} == {6} and len(entries[0]["settings"]["sources"]) == 6


WAIT_FOR_GO = pause_before_reading("kernelspace.jobs.swap")


def test_a_second_run_on_the_same_output_refuses_with_the_holders_pid(dataset: Path, tmp_path: Path) -> None:
    import time

    options = ["--source", "prior", "--model", REPO / "kernelspace" / "weights" / "default", "--no-progress", "--device", "cpu"]
    code = f"import sys\n{WAIT_FOR_GO}\nfrom kernelspace.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", code, "swap", str(dataset), str(tmp_path / "out"), *map(str, options),
                              str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "STARTED").exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before it held the folder"
        second = cli("swap", dataset, tmp_path / "out", *options)
        sharded = cli("swap", dataset, tmp_path / "out", "--shard", "1/3", *options)
    finally:
        out, err = release(first, tmp_path)
    for refused in (second, sharded):
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"is in use by another kernelspace run (pid {first.pid} " in refused.stderr
    assert first.returncode == 0 and "wrote 6" in out, err
    lines = (tmp_path / "out" / "swap_manifest.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(line)["output"] for line in lines}) == 6


def test_shards_run_side_by_side_and_an_unreadable_pair_does_not_stop_the_rest(dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    broken = sorted((data / "GOPR0002_00" / "sharp").iterdir())[0]
    broken.write_text("not an image")
    model = KernelField(cell=64, psf_size=17)
    from kernelspace.jobs.outputs import OutputFolder

    with OutputFolder(tmp_path / "out", shard=(0, 2)):  # another shard's run holds the folder meanwhile
        summary = swap_dataset(data, tmp_path / "out", source="prior", model=model, shard=(1, 2), progress=False)
    assert (summary.written, len(summary.failed)) == (2, 1) and summary.failed[0][0] == str(broken)
    with pytest.raises(ValueError, match="cannot read"):
        swap_dataset(data, tmp_path / "strict", source="prior", model=model, skip_errors=False, progress=False)


def test_relative_paths_as_the_readme_writes_them(dataset: Path, model_dir: Path, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    """`kernelspace swap GOPRO/ GOPRO_swapped/` from the working folder (before: the manifest was opened in
    GOPRO_swapped/GOPRO_swapped/ and the run failed)."""
    monkeypatch.chdir(tmp_path)
    os.symlink(dataset, tmp_path / "GOPRO")
    args = ["swap", "GOPRO/", "GOPRO_swapped/", "--source", "prior", "--model", str(model_dir), "--no-progress"]
    assert main(args) == 0
    assert len(list((tmp_path / "GOPRO_swapped").glob("*/blur/*.png"))) == 6
    assert main(args) == 0 and "wrote 0, 6 already done" in capsys.readouterr().out
