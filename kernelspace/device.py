"""Where the work runs: the user's ``device=`` argument as a :class:`torch.device`, and ``threads=`` as the number
of CPU threads PyTorch uses meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["resolve_device", "DeviceLike", "check_threads", "torch_threads"]

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


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is ``None`` or a positive integer; a ``ValueError`` saying what is accepted otherwise."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be None (PyTorch's setting) or a positive integer, got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (``torch.set_num_threads``), then restore the setting;
    ``None`` leaves PyTorch's setting alone.

    Why: PyTorch uses one thread per core by default, which is fastest on an idle machine, but on a CPU that other
    processes share its threads wait for each other: on a loaded 2-core machine one thread blurred 3-5x faster
    (wall time) than two (docs/synthesis.md). The setting is process-wide, so the block should not run beside other
    PyTorch work in threads of the same process.

    Example:
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
    """
    check_threads(threads)
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
