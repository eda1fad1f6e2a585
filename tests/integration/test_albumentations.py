"""The albumentations adapter on real photos: A.Compose's seed decides the blur, dtypes and shapes come back as
given, masks and boxes are untouched, and the blur is exactly KernelSpaceAugment's."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kernelspace.models import KernelField

from .conftest import library

A = library("albumentations")
from kernelspace.integrations.albumentations import KernelSpaceBlur  # noqa: E402


@pytest.fixture(scope="module")
def image(photo: np.ndarray) -> np.ndarray:
    """A 96x128 uint8 RGB crop of a real photo."""
    return np.ascontiguousarray(photo[40:136, 30:158])


@pytest.fixture(scope="module")
def blur() -> KernelSpaceBlur:
    return KernelSpaceBlur(p=1.0, pool_size=16)  # the default model


def test_the_compose_seed_decides_the_blur(image: np.ndarray, blur: KernelSpaceBlur) -> None:
    def run(seed: int) -> np.ndarray:
        return A.Compose([A.HorizontalFlip(p=0.5), blur], seed=seed)(image=image)["image"]

    first = run(137)
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, run(137))  # same seed, same output
    np.random.seed(0)  # the global seeds play no part
    assert np.array_equal(first, run(137))
    outputs = {run(seed).tobytes() for seed in range(8)}
    assert len(outputs) >= 5  # different seeds, different flips and kernels
    # The blur is the augmentation's, with the kernel albumentations' generator picked.
    out = A.Compose([blur], seed=5)(image=image)["image"]
    params = blur.get_applied_params()["blur"]
    assert params["kernel_index"].shape == (1,)
    assert np.array_equal(out, blur.augment(image, params=params))


def test_dtypes_grey_masks_and_boxes(image: np.ndarray, blur: KernelSpaceBlur) -> None:
    as_float = (image / 255).astype(np.float32)
    out = A.Compose([blur], seed=1)(image=as_float)["image"]
    assert out.dtype == np.float32 and out.shape == image.shape and 0 <= out.min() and out.max() <= 1
    assert np.abs(out - as_float).mean() > 1e-3
    grey = A.Compose([blur], seed=1)(image=image[..., 0])["image"]
    assert grey.shape == image.shape[:2] and grey.dtype == np.uint8
    mask = (image[..., 0] > 128).astype(np.uint8)
    pipeline = A.Compose([blur, A.HorizontalFlip(p=1.0)], seed=2,
                         bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    result = pipeline(image=image, mask=mask, bboxes=[[10, 20, 50, 60]], labels=[1])
    assert np.array_equal(result["mask"], mask[:, ::-1])  # geometry reaches the mask, blur does not
    assert np.allclose(result["bboxes"], [[128 - 50, 20, 128 - 10, 60]])
    never = A.Compose([KernelSpaceBlur(p=0.0, pool_size=16)], seed=3)(image=image)["image"]
    assert np.array_equal(never, image)


def test_pickles_for_dataloader_workers_and_rejects_pairs(image: np.ndarray, blur: KernelSpaceBlur) -> None:
    pipeline = A.Compose([blur], seed=4)
    out = pipeline(image=image)["image"]
    copy = pickle.loads(pickle.dumps(A.Compose([blur], seed=4)))
    assert np.array_equal(copy(image=image)["image"], out)  # the model reloads in the copy: same blur
    with pytest.raises(ValueError, match="return_pair"):
        KernelSpaceBlur(return_pair=True, model=KernelField(cell=32, psf_size=7))
