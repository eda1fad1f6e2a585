"""KernelSpaceAugment and the v2 adapter inside torchvision.transforms.v2 pipelines, on real photo crops:
tv_tensors kept, (sharp, blurry) pairs cropped alike, labels/boxes/masks untouched, batches, DataLoader workers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kernelspace import KernelSpaceAugment

from ..test_augment import small_model
from .conftest import library

library("torchvision")
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from kernelspace.integrations.torchvision import KernelSpaceBlur  # noqa: E402


def test_augment_in_compose_keeps_tv_images_per_sample_and_batched(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=1.0, model=small_model(), pool_size=8)
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1.0), aug])
    single = pipeline(tv_tensors.Image(crops[0]))
    assert type(single) is tv_tensors.Image and single.shape == crops[0].shape
    assert torch.allclose(single, aug(crops[0].flip(-1), params=aug._params), atol=1e-6)  # flip, then that blur
    assert not torch.allclose(single, crops[0].flip(-1), atol=1e-3)
    half = KernelSpaceAugment(p=0.5, model=aug.model, pool_size=8)
    torch.manual_seed(3)
    batch = v2.Compose([v2.RandomHorizontalFlip(p=1.0), half])(tv_tensors.Image(crops))
    assert type(batch) is tv_tensors.Image and batch.shape == crops.shape
    chosen = half._params["batch_prob"] > 0.5
    assert 0 < int(chosen.sum()) < len(crops)  # each sample drawn on its own
    assert torch.equal(batch[~chosen], crops[~chosen].flip(-1))


def test_return_pair_stays_aligned_through_later_transforms(crops: torch.Tensor) -> None:
    pair = KernelSpaceAugment(p=1.0, model=small_model(), pool_size=8, return_pair=True)
    image = tv_tensors.Image(crops[1])
    torch.manual_seed(0)
    sharp, blurry = v2.Compose([pair, v2.RandomCrop((24, 32))])(image)
    # Before the augmentation kept tv_tensors, the blurry image came back a plain tensor and RandomCrop left it
    # whole: the pair no longer matched.
    assert type(sharp) is tv_tensors.Image and type(blurry) is tv_tensors.Image
    assert sharp.shape == blurry.shape == (3, 24, 32)
    full_sharp, full_blurry = pair(image, params=pair._params)
    top, left = next(
        (t, w) for t in range(25) for w in range(33) if torch.equal(full_sharp[:, t : t + 24, w : w + 32], sharp)
    )
    assert torch.equal(blurry, full_blurry[:, top : top + 24, left : left + 32])


def test_adapter_blurs_images_and_passes_labels_boxes_and_masks_through(crops: torch.Tensor) -> None:
    blur = KernelSpaceBlur(p=1.0, model=small_model(), pool_size=8)
    image, label = v2.Compose([v2.RandomHorizontalFlip(p=1.0), blur])(tv_tensors.Image(crops[2]), 7)
    assert label == 7 and type(image) is tv_tensors.Image
    assert torch.allclose(image, blur.augment(crops[2].flip(-1), params=blur.augment._params), atol=1e-6)
    boxes = tv_tensors.BoundingBoxes([[4, 4, 20, 30]], format="XYXY", canvas_size=(48, 64))
    mask = tv_tensors.Mask((crops[2, 0] > 0.5).to(torch.uint8))
    sample = blur({"image": tv_tensors.Image(crops[2]), "boxes": boxes, "mask": mask, "label": 3})
    assert torch.equal(sample["boxes"], boxes) and torch.equal(sample["mask"], mask) and sample["label"] == 3
    assert not torch.allclose(sample["image"], crops[2], atol=1e-3)
    batch, labels = blur(tv_tensors.Image(crops), torch.arange(8))  # a batch: one draw per image
    assert batch.shape == crops.shape and torch.equal(labels, torch.arange(8))
    assert blur.augment._params["kernel_index"].shape == (8,)
    with pytest.raises(ValueError, match="return_pair"):
        KernelSpaceBlur(return_pair=True, model=small_model())


class Crops(Dataset):
    """Real crops as tv_tensors.Image, with a label, through a v2 pipeline."""

    def __init__(self, crops: torch.Tensor, transform: v2.Transform) -> None:
        self.crops, self.transform = crops, transform

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int):
        return self.transform(tv_tensors.Image(self.crops[i]), i)


def test_in_dataloader_workers_reproducible_from_the_loader_seed(crops: torch.Tensor) -> None:
    # The default model, loaded once in each worker (the augmentation is pickled without it).
    transform = v2.Compose([v2.RandomHorizontalFlip(), KernelSpaceBlur(p=1.0, pool_size=8)])
    data = Crops(crops, transform)

    def epoch(seed: int) -> list[torch.Tensor]:
        loader = DataLoader(data, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(seed))
        return [images for images, _ in loader]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    images = torch.cat(first)
    assert images.shape == crops.shape
    assert all(not torch.allclose(o, c, atol=1e-3) and not torch.allclose(o, c.flip(-1), atol=1e-3)
               for o, c in zip(images, crops))  # every image blurred
