"""Image-folder datasets: paired layouts, clean photos, random geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kernelspace.data import PairedFolder, PhotoFolder, find_pairs, list_images
from kernelspace.io import load_image, save_image


@pytest.fixture(scope="module")
def gopro_crops(shared_data) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two real GoPro pairs, cropped to 48x64."""
    root = shared_data / "eval" / "gopro_pairs6"
    names = sorted(p.name for p in (root / "sharp").iterdir())[:2]
    return [
        tuple(np.asarray(load_image(root / side / n).convert("RGB"))[300:348, 600:664] for side in ("sharp", "blur"))
        for n in names
    ]


def _write(root: Path, layout: str, pairs) -> None:
    for i, (sharp, blurry) in enumerate(pairs):
        name = f"{i:03d}.png"
        dirs = {
            "gopro": (f"seqA/sharp/{name}", f"seqA/blur/{name}"),
            "reds": (f"train_sharp/000/{name}", f"train_blur/000/{name}"),
            "plain": (f"sharp/{name}", f"blur/{name}"),
        }[layout]
        save_image(sharp, root / dirs[0])
        save_image(blurry, root / dirs[1])


@pytest.mark.parametrize("layout, key", [("gopro", "seqA/001.png"), ("reds", "train/000/001.png"), ("plain", "001.png")])
def test_layouts_found_and_read(tmp_path, gopro_crops, layout, key):
    _write(tmp_path, layout, gopro_crops)
    found, pairs = find_pairs(tmp_path)
    assert found == layout and [p.key for p in pairs][1] == key
    ds = PairedFolder(tmp_path, crop=None, flips=False, rot90=False)
    item = ds[1]
    assert item["key"] == key
    np.testing.assert_array_equal((item["blurry"].permute(1, 2, 0).numpy() * 255).round(), gopro_crops[1][1])
    with pytest.raises(ValueError, match="no image pairs"):
        find_pairs(tmp_path, layout={"gopro": "plain", "reds": "gopro", "plain": "reds"}[layout])


def test_bad_datasets_say_what_is_expected(tmp_path, gopro_crops):
    with pytest.raises(FileNotFoundError):
        find_pairs(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown layout 'vimeo'.*'gopro'"):
        find_pairs(tmp_path, "vimeo")
    with pytest.raises(ValueError, match="SEQ/blur"):
        find_pairs(tmp_path)
    _write(tmp_path, "plain", gopro_crops)
    (tmp_path / "blur" / "001.png").rename(tmp_path / "blur" / "009.png")
    with pytest.raises(ValueError, match="unmatched: \\['001.png', '009.png'\\]"):
        find_pairs(tmp_path)


def test_pairs_share_their_geometry_and_epochs_reseed(tmp_path, gopro_crops):
    _write(tmp_path, "plain", gopro_crops)
    # A pair whose blurry image equals its sharp image shows whether both got the same crop and turn.
    save_image(gopro_crops[0][0], tmp_path / "blur" / "000.png")
    ds = PairedFolder(tmp_path, crop=24, seed=3)
    views = [ds[0]["sharp"] for _ in range(2)]
    assert torch.equal(views[0], views[1]) and torch.equal(ds[0]["sharp"], ds[0]["blurry"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["sharp"], views[0])
    assert ds[0]["sharp"].shape == (3, 24, 24)


def test_photos_any_size_and_same_through_workers(tmp_path, shared_data):
    files = list_images(shared_data / "train" / "set14")[:3]
    for f in files:
        save_image(np.asarray(load_image(f).convert("RGB"))[:40, :50], tmp_path / "sub" / (f.stem + ".png"))
    ds = PhotoFolder(tmp_path, crop=64, seed=1)  # smaller than the crop: padded, not rejected
    direct = torch.stack([ds[i] for i in range(len(ds))])
    loaded = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=2)))
    assert direct.shape == (3, 3, 64, 64) and torch.equal(direct, loaded)
    with pytest.raises(ValueError, match="crop must be a positive integer"):
        PhotoFolder(tmp_path, crop=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        PhotoFolder(tmp_path / "empty")
