"""Writing files so that a crash never leaves half of one: atomic writes, and safetensors files that are the
same bytes for the same tensors.

A file is written under a unique temporary name beside its destination, flushed to disk and renamed over it,
so a reader sees the old file or the new one, never a mix. The temporary file is created with mode ``0o666``
and the process umask applies, as for :func:`open` (``tempfile.mkstemp`` would make it owner-only).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

__all__ = ["atomic_write", "save_tensors", "safetensors_chunks", "sync_folder", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (``.NAME.<random>.part``): two writers never share one."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")


def atomic_write(path: str | os.PathLike, *chunks: bytes | memoryview) -> Path:
    """Write the ``chunks`` one after the other to ``path``, atomically (see the module); returns ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> atomic_write(target, b"one").read_bytes()
        b'one'
    """
    path = Path(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    return path


def sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (and text ``metadata``) as a safetensors file, atomically and reproducibly.

    safetensors orders its header's metadata by a hash map, so the same tensors could give different bytes
    from one process to the next; the header is written again with sorted keys.

    Example:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> one = save_tensors(path, {"a": torch.ones(2)}, {"x": "1", "y": "2"}).read_bytes()
        >>> one == save_tensors(path, {"a": torch.ones(2)}, {"y": "2", "x": "1"}).read_bytes()
        True
    """
    return atomic_write(path, *safetensors_chunks(tensors, metadata))


def safetensors_chunks(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[bytes | memoryview, ...]:
    """The bytes of a safetensors file of ``tensors``, in pieces to write one after the other (see
    :func:`save_tensors`; pieces, so that a large file is not copied once more to join them)."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    data = safetensors_bytes(cpu, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to a multiple of 8 bytes
    return len(header).to_bytes(8, "little"), header, memoryview(data)[8 + size :]
