"""The augmentation experiment (examples/augmentation_experiment): its network, both arms' data and training
steps, so that the example cannot silently rot."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from .conftest import DATA, need

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "augmentation_experiment"


@pytest.fixture(scope="module")
def run():
    """The example's script as a module (it puts its folder on sys.path and imports ``srn`` from there)."""
    need(DATA / "train")
    name = "augmentation_experiment_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / "run.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_network_docstring_examples_run(run) -> None:
    # examples/ is outside pytest's doctest paths: run srn.py's examples here.
    assert doctest.testmod(sys.modules[run.SRNDeblur.__module__]).failed == 0


@pytest.fixture(scope="module")
def budget(run):
    return replace(run.Budget(), steps=2, batch=4, crop=48, width=4, pool_size=8)


def test_arms_differ_only_in_the_degradation_and_are_reproducible(run, budget) -> None:
    a, b, c, d = (run.BlurredPhotos(budget, arm) for arm in "abcd")
    (sharp_a, blurry_a), (sharp_b, blurry_b), (sharp_c, blurry_c), (sharp_d, blurry_d) = (
        arm.batch(3) for arm in (a, b, c, d))
    assert sharp_a.shape == blurry_a.shape == (4, 3, 48, 48)
    assert torch.equal(sharp_a, sharp_b) and torch.equal(sharp_a, sharp_c) and torch.equal(sharp_a, sharp_d)
    # (b), (c) and (d) blur with the same kernels; (c) then degrades them otherwise (sensor noise, JPEG), and (d)
    # blurs the stored values instead of linear light.
    assert torch.equal(b.kernel_space._params["kernel_seed"], c.kernel_space._params["kernel_seed"])
    assert torch.equal(b.kernel_space._params["kernel_seed"], d.kernel_space._params["kernel_seed"])
    assert c.kernel_space._params["noise_prob"].all()
    assert max(b.kernel_space.model.gammas) == 2.2 and d.kernel_space.model.gammas == [1.0]  # the prior: the max
    for x, y in ((blurry_a, blurry_b), (blurry_b, blurry_c), (blurry_b, blurry_d), (blurry_a, sharp_a)):
        assert not (x == y).flatten(1).all(1).any()
    # (e) is (c) with a response of each sample's own: the same kernels and chain draws, other values.
    e = run.BlurredPhotos(budget, "e")
    sharp_e, blurry_e = e.batch(3)
    assert torch.equal(sharp_e, sharp_a)
    params_c, params_e = c.kernel_space._params, e.kernel_space._params
    assert all(torch.equal(params_c[k], params_e[k]) for k in params_c if k != "response_gamma")
    assert ((params_e["response_gamma"] >= 1.0) & (params_e["response_gamma"] <= 2.2)).all()
    assert not (blurry_e == blurry_c).flatten(1).all(1).any()
    for data, blurry in ((a, blurry_a), (b, blurry_b), (c, blurry_c), (d, blurry_d), (e, blurry_e)):
        assert torch.equal(blurry, data.batch(3)[1])  # a step's batch is fixed: a resumed run sees the same data
        assert torch.equal(blurry * 255, (blurry * 255).round())  # 8-bit quantised


def test_network_learns_a_fixed_batch(run, budget) -> None:
    torch.manual_seed(0)
    net = run.SRNDeblur(width=8, blocks=1)
    outputs = net(torch.rand(1, 3, 37, 50))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 9, 12), (1, 3, 18, 25), (1, 3, 37, 50)]
    sharp, blurry = run.BlurredPhotos(budget, "b").batch(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = run.multiscale_loss(net(blurry), sharp)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


def test_each_arm_trains_checkpoints_and_resumes(run, budget, tmp_path: Path) -> None:
    for arm in run.ARMS:
        net, record = run.train(budget, arm, tmp_path, save_every=1)
        assert record["step"] == 2 and len(record["losses"]) == 2
        assert all(torch.isfinite(torch.tensor([loss for _, loss in record["losses"]])))
        assert (tmp_path / f"arm_{arm}.pt").exists()
        again, resumed = run.train(budget, arm, tmp_path, save_every=1)  # finished: loaded, not retrained
        assert resumed["train_seconds"] == record["train_seconds"]
        assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), again.state_dict().values()))
    # Stopped after one step and resumed: the same network as trained in one go.
    last = list(run.ARMS)[-1]  # the arm `net` came from
    run.train(budget, last, tmp_path / "stopped", save_every=1, until=1)
    resumed, record = run.train(budget, last, tmp_path / "stopped", save_every=1)
    assert record["step"] == 2
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ValueError, match="another budget"):
        run.train(replace(budget, steps=3), "a", tmp_path, save_every=1)
    estimate = run.restore(net, torch.rand(1, 1, 40, 40))  # grey in, grey out
    assert estimate.shape == (1, 1, 40, 40)


def test_photos_come_from_the_given_folder(run, budget, tmp_path: Path) -> None:
    from kernelspace.io import save_image

    for name, level in (("dark", 51), ("light", 204)):
        save_image(torch.full((3, 64, 80), level / 255), tmp_path / "photos" / f"{name}.png")
    trainer = run.Trainer(budget, "a", tmp_path / "work", photos=tmp_path / "photos")
    trainer.advance(1, save_every=1)
    sharp, _ = trainer.data.batch(0)
    assert set(torch.unique((sharp * 255).round()).tolist()) <= {51.0, 204.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_match_the_cpu(run, budget) -> None:
    for arm in run.ARMS:
        data = run.BlurredPhotos(budget, arm)
        sharp, blurry = data.batch(3)
        sharp_gpu, blurry_gpu = data.batch(3, "cuda")
        assert blurry_gpu.device.type == "cuda" and torch.equal(sharp_gpu.cpu(), sharp)
        # The same draws: float rounding differs, so 8-bit quantisation (and JPEG's, for a block) can move values
        # by a level or so; other draws would differ by many levels everywhere.
        assert (blurry_gpu.cpu() - blurry).abs().mean() < 0.5 / 255, arm
