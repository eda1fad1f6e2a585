"""KernelSpaceAugment: input kinds, per-sample independence, seeds and replay, pickling, DataLoader workers,
kornia and torchvision pipelines."""

from __future__ import annotations

import pickle

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kernelspace import KernelSpaceAugment
from kernelspace.models import KernelField

from .conftest import DATA, need


def small_model() -> KernelField:
    return KernelField(cell=32, psf_size=9, iterations=30)


@pytest.fixture(scope="module")
def crops(photo: np.ndarray) -> torch.Tensor:
    """Eight different 48x64 crops of a real photo, (8, 3, 48, 64) float in [0, 1]."""
    x = torch.tensor(photo).permute(2, 0, 1).float() / 255
    return torch.stack([x[:, 30 * i : 30 * i + 48, 20 * i : 20 * i + 64] for i in range(8)])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_input_kind_comes_back_as_given(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=1.0, model=small_model())
    rgb = (crops[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cases = [Image.fromarray(rgb), Image.fromarray(rgb).convert("L"), rgb, rgb[..., 0], crops[0], crops, crops.double()]
    for image in cases:
        out = aug(image, generator=seeded(0))
        assert type(out) is type(image)
        if isinstance(image, Image.Image):
            assert (out.mode, out.size) == (image.mode, image.size)
        else:
            assert (out.shape, out.dtype) == (image.shape, image.dtype)
            assert not np.array_equal(np.asarray(out), np.asarray(image))  # p=1: blurred
    listed = aug([rgb, crops[1], Image.fromarray(rgb[:40, :40])], generator=seeded(0))
    assert isinstance(listed, list) and listed[2].size == (40, 40)
    assert aug._params["kernel_index"].shape == (3,)


def test_each_sample_is_blurred_independently(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=0.5, model=small_model())
    params = aug.forward_parameters(crops.shape, seeded(3))
    out = aug(crops, params=params)
    chosen = params["batch_prob"] > 0.5
    assert 0 < int(chosen.sum()) < len(crops)  # this seed blurs some and spares others
    assert torch.equal(out[~chosen], crops[~chosen])
    assert all(not torch.allclose(o, c, atol=1e-3) for o, c in zip(out[chosen], crops[chosen]))
    # A sample's result depends on its own parameters only, not on the rest of the batch.
    for i in range(len(crops)):
        alone = aug(crops[i : i + 1], params={k: v[i : i + 1] for k, v in params.items() if k != "forward_input_shape"})
        assert torch.allclose(alone[0], out[i], atol=1e-5)
    # The same image throughout a batch gets different kernels.
    same = crops[:1].expand(8, -1, -1, -1).contiguous()
    blurred = KernelSpaceAugment(p=1.0, model=small_model())(same, generator=seeded(0))
    assert len({tuple(b.flatten()[:200].tolist()) for b in blurred}) == 8


def _distinct(images: torch.Tensor) -> int:
    return len({bytes(image.numpy().tobytes()) for image in images})


def test_every_sample_gets_a_blur_of_its_own(crops: torch.Tensor) -> None:
    # 3,200 samples, batch by batch as in training, all of one real crop: each blurred sample shows its kernel.
    # (A fixed pool of 64 prior kernels, the earlier default, gave 64 distinct blurs here.)
    aug = KernelSpaceAugment(p=1.0, model=small_model())
    same = crops[:1].expand(16, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    outputs, kernels = [], []
    for _ in range(200):
        outputs.append(aug(same))
        kernels.append(aug.kernels(aug._params, *same.shape[-2:]))
    assert _distinct(torch.cat(outputs)) == 3200 and _distinct(torch.cat(kernels)) == 3200
    pooled = KernelSpaceAugment(p=1.0, model=small_model(), pool_size=64)
    assert _distinct(torch.cat([pooled(same) for _ in range(20)])) <= 64


def test_seeds_and_replay(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=0.7, model=small_model())
    a, b, c = aug(crops, generator=seeded(1)), aug(crops, generator=seeded(1)), aug(crops, generator=seeded(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = aug(crops)
    torch.manual_seed(5)
    assert torch.equal(d, aug(crops))  # no generator: PyTorch's global one
    # Replay the last parameters on a second input (another view of the same scene): the same blur.
    params = aug._params
    other = crops.flip(-1)
    assert torch.equal(aug(other, params=params), aug.apply(other, params))
    assert torch.equal(aug.apply(crops, params), d)
    # Another instance replays identically: each sample's kernel comes from its seed in the parameters.
    twin = KernelSpaceAugment(p=0.7, model=small_model())
    assert torch.equal(twin.apply(crops, params), d)
    # So does one with a fixed pool, from the pool's seed.
    pooled = KernelSpaceAugment(p=0.7, model=small_model(), pool_size=8)
    pooled_params = pooled.forward_parameters(crops.shape, seeded(1))
    assert torch.equal(KernelSpaceAugment(p=0.7, model=small_model(), pool_size=8)(crops, params=pooled_params),
                       pooled(crops, params=pooled_params))


def test_return_pair(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=1.0, model=small_model(), return_pair=True)
    sharp, blurry = aug(crops, generator=seeded(0))
    assert torch.equal(sharp, crops) and blurry.shape == crops.shape and not torch.equal(blurry, crops)
    pil = Image.fromarray((crops[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    sharp_pil, blurry_pil = aug(pil)
    assert np.array_equal(np.asarray(sharp_pil), np.asarray(pil)) and blurry_pil.size == pil.size


def test_kernel_pool_from_real_pairs(crops: torch.Tensor) -> None:
    model = small_model()
    k = model.sample_kernel(48, 64, seed=4)
    pairs = [(crops[0], model.apply_kernel(crops[0], k)), (crops[1], model.apply_kernel(crops[1], k))]
    aug = KernelSpaceAugment(p=1.0, kernels=pairs, model=model)
    assert aug.source == "pool" and aug.num_kernels == 2
    pool = aug.kernel_pool(48, 64)
    assert pool.shape == (2, *k.shape[1:])
    # The extracted kernel reproduces the pair's blur on a new image better than the identity does.
    target = crops[5:6]
    truth = model.apply_kernel(target, k)
    first = {"batch_prob": torch.ones(1), "kernel_index": torch.zeros(1, dtype=torch.long),
             "kernel_seed": torch.zeros(1, dtype=torch.long)}
    moved = aug(target, params=first)
    assert (moved - truth).abs().mean() < 0.5 * (target - truth).abs().mean()
    # Half real kernels, half the prior's: drawn afresh (index -1, from the sample's seed) or from a fixed pool.
    both = KernelSpaceAugment(p=1.0, kernels=pool, source="both", model=model)
    index = both.forward_parameters((400,), seeded(0))["kernel_index"]
    assert both.num_kernels == 2 and 0.4 < float((index == -1).float().mean()) < 0.6 and int(index.max()) < 2
    pooled = KernelSpaceAugment(p=1.0, kernels=pool, source="both", model=model, pool_size=6)
    index = pooled.forward_parameters((400,), seeded(0))["kernel_index"]
    real = index < 2
    assert pooled.num_kernels == 8 and 0.4 < float(real.float().mean()) < 0.6 and 0 <= int(index.min())
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):  # a pool of real kernels has no prior
        aug(target, params={**first, "kernel_index": torch.full((1,), -1)})
    # A pool kernel made for another size is resized to the image's grid.
    assert KernelSpaceAugment(p=1.0, kernels=pool, model=model)(torch.rand(1, 3, 100, 70)).shape == (1, 3, 100, 70)


def test_sizes_with_the_same_kernel_grid_share_a_pool() -> None:
    aug = KernelSpaceAugment(p=1.0, model=small_model(), pool_size=4)  # 32-px cells
    for height, width in ((48, 64), (40, 60), (64, 65), (64, 64)):
        aug(torch.rand(1, 3, height, width))
    assert sorted(key[1:] for key in aug._pools) == [(2, 2), (2, 3)]
    assert torch.equal(aug.kernel_pool(48, 64), aug.kernel_pool(64, 64))


def test_bad_arguments_say_what_is_accepted(crops: torch.Tensor) -> None:
    model = small_model()
    with pytest.raises(ValueError, match="probability"):
        KernelSpaceAugment(p=1.5, model=model)
    with pytest.raises(ValueError, match="none were given"):
        KernelSpaceAugment(source="pool", model=model)
    with pytest.raises(ValueError, match="one of"):
        KernelSpaceAugment(source="real", model=model)
    with pytest.raises(ValueError, match=r"\(82, h, w\) kernel"):
        KernelSpaceAugment(kernels=torch.rand(2, 5, 1, 1), model=model)
    aug = KernelSpaceAugment(model=model)
    with pytest.raises(ValueError, match="batch of 2"):
        aug(crops, params=aug.forward_parameters((2,)))
    with pytest.raises(ValueError, match="needs params"):
        aug.apply(crops)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aug(crops * 255)


def test_pickles_without_its_model_and_replays_the_same() -> None:
    x = torch.rand(2, 3, 128, 128)
    aug = KernelSpaceAugment(p=1.0)  # the default model, loaded lazily
    y = aug(x, generator=seeded(0))
    blob = pickle.dumps(aug)
    assert len(blob) < 20_000  # no model weights, no kernel pool inside
    clone = pickle.loads(blob)
    assert clone._models == {} and torch.equal(clone(x, params=aug._params), y)


class _Photos(Dataset):
    """64x64 crops of real photos, blurred by the augmentation inside the worker."""

    def __init__(self, aug: KernelSpaceAugment) -> None:
        self.files = sorted(need(DATA / "train" / "cbsd68").iterdir())[:8]
        self.aug = aug

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = torch.tensor(np.asarray(Image.open(self.files[i]).convert("RGB"))[:64, :64]).permute(2, 0, 1) / 255
        sharp, blurry = self.aug(x)
        return sharp, blurry, torch.get_num_threads()


def test_dataloader_with_two_workers_is_reproducible() -> None:
    dataset = _Photos(KernelSpaceAugment(p=1.0, model=small_model(), return_pair=True))

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loader = DataLoader(dataset, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(seed))
        sharp, blurry, threads = (torch.cat(parts) for parts in zip(*loader))
        return sharp, blurry, threads

    sharp, blurry, threads = epoch(0)
    assert sharp.shape == blurry.shape == (8, 3, 64, 64) and not torch.equal(sharp, blurry)
    assert threads.tolist() == [1] * 8  # one thread per worker: no oversubscription
    assert torch.equal(epoch(0)[1], blurry) and not torch.equal(epoch(1)[1], blurry)
    # One loader's second epoch draws other blurs than its first (DataLoader reseeds the workers every epoch).
    loader = DataLoader(dataset, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
    first, second = ([b for _, b, _ in loader] for _ in range(2))
    assert torch.equal(torch.cat(first), blurry) and not any(torch.equal(a, b) for a, b in zip(first, second))


def test_in_a_kornia_pipeline_masks_pass_and_params_replay(crops: torch.Tensor) -> None:
    blur = KernelSpaceAugment(p=1.0, model=small_model())
    pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), blur, data_keys=["input", "mask"])
    mask = (crops[:, :1] > 0.5).float()
    torch.manual_seed(0)
    out, out_mask = pipeline(crops, mask)
    assert torch.equal(out_mask, mask.flip(-1))  # geometry reaches the mask, blur does not
    assert torch.allclose(out, blur(crops.flip(-1), params=blur._params), atol=1e-6)
    again, _ = pipeline(crops, mask, params=pipeline._params)
    assert torch.equal(again, out)
    # nn.Module.apply still walks through the augmentation.
    assert pipeline.apply(lambda module: None) is pipeline


def test_in_a_torchvision_pipeline(crops: torch.Tensor) -> None:
    transforms = pytest.importorskip("torchvision.transforms.v2")
    blur = KernelSpaceAugment(p=1.0, model=small_model())
    pipeline = transforms.Compose([transforms.RandomHorizontalFlip(p=1.0), blur])
    pil = Image.fromarray((crops[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    out = pipeline(pil)
    assert isinstance(out, Image.Image) and out.size == pil.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_stay_on_the_gpu_and_match_the_cpu(crops: torch.Tensor) -> None:
    aug = KernelSpaceAugment(p=0.5, model=small_model())
    out_cpu = aug(crops, generator=seeded(0))
    out_gpu = aug(crops.cuda(), params=aug._params)
    assert out_gpu.device.type == "cuda" and torch.allclose(out_gpu.cpu(), out_cpu, atol=1e-4)


_MEMORY_CHECK = """
import sys
import numpy as np
import torch
from PIL import Image
from kernelspace import BlurSynthesizer, KernelSpaceAugment, load_model

frame = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
model = load_model(None, device="cpu")
BlurSynthesizer(model, device="cpu").sample(frame, seed=0)
KernelSpaceAugment(p=1.0, model=model)(frame, generator=torch.Generator().manual_seed(0))
# VmHWM is this program's own peak: ru_maxrss would also count the parent's peak at the moment of the exec.
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024)
"""


def test_a_720p_frame_is_blurred_in_bounded_memory() -> None:
    # A fresh process, so the peak is this work's alone (interpreter, PyTorch and the model included): the blur
    # runs block by block, so a 1280x720 frame needs far less than the 1.85 GB the whole-image blur took.
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").exists():
        pytest.skip("reads the peak memory from /proc (Linux)")
    frame = need(DATA / "eval" / "gopro_pairs6" / "sharp" / "00.png")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHECK, str(frame)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) <= 500.0


def test_threads_option_sets_and_restores_pytorchs_threads(crops: torch.Tensor) -> None:
    # The blur runs with the threads asked for, and the caller's setting is back afterwards.
    from kernelspace import BlurSynthesizer

    before = torch.get_num_threads()
    seen = []
    model = small_model()
    blur = model.apply_kernel
    model.apply_kernel = lambda *a: (seen.append(torch.get_num_threads()), blur(*a))[1]  # records, then blurs
    other = before + 1
    out = KernelSpaceAugment(p=1.0, model=model, threads=other)(crops, generator=seeded(0))
    BlurSynthesizer(model, device="cpu", threads=other).sample(crops[0], seed=0)
    assert seen == [other, other] and torch.get_num_threads() == before
    torch.testing.assert_close(out, KernelSpaceAugment(p=1.0, model=small_model())(crops, generator=seeded(0)))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be None"):
            KernelSpaceAugment(model=model, threads=bad)
        with pytest.raises(ValueError, match="threads must be None"):
            BlurSynthesizer(model, device="cpu", threads=bad)
