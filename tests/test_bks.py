"""The published network: golden vectors, any image size, kernel geometry, prior, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelspace.models import BKSNet

TINY = dict(nf=8, front_RBs=1, back_RBs=1, kernel_dim=64, n_blocks=1)


def _golden_net(vectors) -> BKSNet:
    sd = vectors["state"]
    net = BKSNet(**BKSNet.config_from_state_dict(sd))
    net.load_state_dict(sd, strict=True)
    return net.eval()


@pytest.mark.parametrize("name", ["tiny", "tiny_vae"])
def test_golden_vectors_reproduced(golden, name):
    npz = golden[name]
    net = _golden_net(npz)
    x, y = npz["x_sharp"], npz["y_blur"]
    if net.use_vae:
        kernel, sigma = net.extract_kernel(x, y, return_dist=True)
        torch.testing.assert_close(sigma, npz["kernel_sigma"], atol=1e-5, rtol=0)
    else:
        kernel = net.extract_kernel(x, y)
    torch.testing.assert_close(kernel, npz["kernel"], atol=1e-5, rtol=0)
    y_hat = net.apply_kernel(x, npz["kernel"])
    torch.testing.assert_close(y_hat, npz["y_hat"], atol=1e-5, rtol=0)


def test_config_inferred_from_published_names(golden):
    assert BKSNet.config_from_state_dict(golden["tiny_vae"]["state"]) == dict(
        nf=8, front_RBs=2, back_RBs=2, kernel_dim=64, n_blocks=2, use_vae=True
    )
    with pytest.raises(ValueError, match="not a BKS"):
        BKSNet.config_from_state_dict({"conv.weight": torch.zeros(1)})


def test_released_parameter_counts():
    assert sum(p.numel() for p in BKSNet().parameters()) == 49_205_187
    assert sum(p.numel() for p in BKSNet(use_vae=True).parameters()) == 115_265_475


@pytest.mark.parametrize("size", [(37, 53), (255, 255), (300, 500), (720, 1280)])
def test_any_size_keeps_the_input_size(golden, size):
    net = _golden_net(golden["tiny"])
    npz = golden["tiny"]
    x = npz["x_sharp"]
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    k = net.extract_kernel(x, x)
    assert tuple(k.shape[-2:]) == net.kernel_size_for(*size)
    y = net.apply_kernel(x, k)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_padding_leaves_accepted_sizes_alone(golden):
    # At 256x384 the published code runs unpadded; a crop that needs padding still matches inside.
    net = _golden_net(golden["tiny"])
    assert net.padded_size(256, 384) == (256, 384)
    assert net.padded_size(255, 255) == (256, 256) and net.padded_size(37, 53) == (256, 256)
    assert net.kernel_size_for(720, 1280) == (6, 10)


def test_kernel_resized_to_another_image(golden):
    net = _golden_net(golden["tiny"])
    npz = golden["tiny"]
    k = npz["kernel"]  # 2x3 grid of a 256x384 image
    big = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    resized = net.resize_kernel(k, 512, 512)
    assert tuple(resized.shape) == (1, 64, 4, 4)
    torch.testing.assert_close(net.apply_kernel(big, k), net.apply_kernel(big, resized))
    with pytest.raises(ValueError, match=r"shape \(B, 64, h, w\)"):
        net.apply_kernel(big, torch.zeros(1, 32, 2, 2))


def test_grey_and_numpy_inputs_come_back_as_given(levin_pair):
    net = BKSNet(**TINY).eval()
    sharp, blurry = levin_pair
    k = net.extract_kernel(sharp, blurry)
    out = net.apply_kernel(sharp, k)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == sharp.shape


def test_gradients_flow_to_image_and_kernel(golden):
    net = _golden_net(golden["tiny"])
    npz = golden["tiny"]
    x = npz["x_sharp"][..., :64, :96].clone().requires_grad_()
    k = npz["kernel"].clone().requires_grad_()
    net.apply_kernel(x, k).square().mean().backward()
    assert x.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_inference_mode_without_grad_and_clone_to_optimise(golden):
    net = _golden_net(golden["tiny"])
    x = golden["tiny"]["x_sharp"]
    k = net.extract_kernel(x, x)
    assert k.is_inference()
    k = k.clone().requires_grad_()  # the documented way to start optimising from an extracted kernel
    net.apply_kernel(x, k).mean().backward()
    assert k.grad is not None


def test_sample_kernel_is_seeded_and_needs_a_prior():
    vae = BKSNet(**{**TINY, "use_vae": True})
    a = vae.sample_kernel(300, 500, seed=3)
    assert tuple(a.shape) == (1, 64, *vae.kernel_size_for(300, 500))
    assert torch.equal(a, vae.sample_kernel(300, 500, seed=3))
    assert not torch.equal(a, vae.sample_kernel(300, 500, seed=4))
    assert torch.equal(a, vae.sample_kernel(300, 500, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="no prior"):
        BKSNet(**TINY).sample_kernel(256, 256, seed=0)
    with pytest.raises(ValueError, match="no kernel distribution"):
        BKSNet(**TINY).extract_kernel(torch.rand(3, 8, 8), torch.rand(3, 8, 8), return_dist=True)


def test_mismatched_pair_is_rejected():
    with pytest.raises(ValueError, match="same batch and size"):
        BKSNet(**TINY).extract_kernel(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
