"""Turning the user's ``device=`` argument into a :class:`torch.device`."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "DeviceLike"]

DeviceLike = str | torch.device


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """Return the device named by ``device``: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a :class:`torch.device`.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(dev)!r} asked for, but this PyTorch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of PyTorch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev
