"""Shared fixtures: the real images in ../shared (tests that need them skip with a message when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
GOLDEN = SHARED / "reference" / "bks_golden"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the project's shared data, kept beside the repo in ../shared")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (tests that use it skip when it is absent); conftest is not importable as a module."""
    return need(DATA)


@pytest.fixture(scope="session")
def golden() -> dict[str, dict[str, torch.Tensor]]:
    """Test vectors made with the published implementation, for the plain ("tiny") and VAE ("tiny_vae") heads:
    the inputs and outputs by name, and the published state dict under "state"."""
    vectors = {}
    for name in ("tiny", "tiny_vae"):
        npz = np.load(need(GOLDEN / f"{name}.npz"))
        v = {k: torch.from_numpy(npz[k]) for k in npz.files if not k.startswith("state/")}
        v["state"] = {k.removeprefix("state/"): torch.from_numpy(npz[k]) for k in npz.files if k.startswith("state/")}
        vectors[name] = v
    return vectors


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (uint8, HxWx3) from the training set."""
    from PIL import Image

    files = sorted(need(DATA / "train" / "cbsd68").iterdir())
    return np.asarray(Image.open(files[0]).convert("RGB"))


@pytest.fixture(scope="session")
def levin_pair() -> tuple[np.ndarray, np.ndarray]:
    """A real camera-shake pair from Levin et al. 2009: (sharp, blurry), uint8 255x255 grey."""
    from PIL import Image

    root = need(DATA / "eval" / "levin2009")
    sharp = np.asarray(Image.open(root / "gt" / "im1.png").convert("L"))
    return sharp, np.asarray(Image.open(root / "blur" / "im1_kernel1_img.png").convert("L"))
