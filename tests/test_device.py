"""Device names: auto, cpu, cuda[:n], and clear errors for the rest."""

from __future__ import annotations

import pytest
import torch

from kernelspace import resolve_device
from kernelspace.models import BKSNet


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_devices():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("meta")
    with pytest.raises(TypeError, match="string or torch.device"):
        resolve_device(0)
    beyond = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match="no CUDA GPU|does not exist"):
        resolve_device(beyond)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(golden):
    net = BKSNet(nf=8, front_RBs=2, back_RBs=2, kernel_dim=64, n_blocks=2)
    net.load_state_dict(golden["tiny"]["state"])
    x, y = golden["tiny"]["x_sharp"], golden["tiny"]["y_blur"]
    k_cpu = net.extract_kernel(x, y)
    gpu = net.cuda()
    k = gpu.extract_kernel(x, y)
    assert k.device.type == "cpu"  # results come back where the inputs were
    torch.testing.assert_close(k, k_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.apply_kernel(x.cuda(), k.cuda()).cpu(), golden["tiny"]["y_hat"], atol=1e-4, rtol=0)
