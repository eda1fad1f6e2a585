"""The output folder of a job, kept safe: what ``swap``, ``deblur`` and ``train`` share so that they never lose,
mix or overwrite what they did not write.

- **One run at a time** (:class:`OutputFolder`): a run holds a lock on ``OUT/.kernelspace.lock``, which names
  its process; a second run on the same folder stops at once and says who holds it (:class:`FolderInUse`).
  Shards of one job (``swap --shard i/n``) share the folder, each holding the lock of its own shard. The lock
  is the operating system's (``flock``): a killed run leaves nothing that blocks the next one.
- **Confined writes** (:meth:`OutputFolder.confine`): every file written or deleted must lie inside the folder
  once symbolic links are resolved, checked file by file, and is never itself a link.
- **Private temporary files**: a run writes each file into its own ``OUT/.kernelspace-tmp/`` folder under a
  unique name and renames it into place, so runs never touch each other's half-written files; what a killed
  run left there is removed when the next run starts, and the folder is removed on success.
- **Manifests** (:func:`read_manifest`, :func:`append_line`, :func:`compact_manifest`): JSON lines, each
  fsynced, a line cut short by a kill dropped on the next start, one line per output once it is in place.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, BinaryIO

import torch

from ..files import sync_folder
from ..io import save_image

try:
    import fcntl
except ImportError:  # Windows: an exclusive lock file stands in (see _Lock)
    fcntl = None

__all__ = [
    "OutputFolder", "FolderInUse", "read_manifest", "append_line", "rewrite_manifest", "recorded_files",
    "compact_manifest", "file_sha256", "model_fingerprint", "naming", "LOCK_NAME", "TEMP_NAME",
]

LOCK_NAME = ".kernelspace.lock"
TEMP_NAME = ".kernelspace-tmp"


class FolderInUse(RuntimeError):
    """Another run holds the output folder's lock."""


class _Lock:
    """One lock file: exclusive, or shared (shards). The holder's pid, host and command are written in it."""

    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path, self.exclusive, self.fd = path, exclusive, -1

    def acquire(self, holders: Any) -> None:
        while True:
            flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
            try:
                fd = os.open(self.path, flags, 0o666)
            except FileExistsError:  # no fcntl: the file itself is the lock
                raise FolderInUse(holders()) from None
            try:
                if fcntl:
                    fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUse(holders()) from None
            # A holder that was releasing may have deleted the file between our open and our lock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)
        if self.exclusive:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder()).encode())

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            # A shared holder deletes the file only if it turns out to be the last holder.
            last = self.exclusive or not fcntl
            if not last:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    pass
            if last:
                os.ftruncate(self.fd, 0)
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def _describe_holders(files: list[Path]) -> str:
    found = []
    for path in files:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            found.append(f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "; ".join(found) or "a process that has not written its pid yet"


class OutputFolder:
    """The output folder of one run, locked while the run lasts (a context manager; see the module).

    Args:
        root: the folder; created if missing (``created`` says whether this run made it).
        shard: ``(i, n)`` for a shard of a job that splits its outputs into ``n`` disjoint parts: such runs
            share the folder, one per shard; ``None`` (or ``(0, 1)``): the run holds the folder alone.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> with OutputFolder(out) as folder:
        ...     try:
        ...         OutputFolder(out).__enter__()
        ...     except FolderInUse as err:
        ...         print("refused:", "in use by another kernelspace run (pid" in str(err))
        ...     _ = folder.write(out / "a.txt", b"done")
        refused: True
        >>> sorted(p.name for p in out.iterdir())
        ['a.txt']
    """

    def __init__(self, root: str | os.PathLike, *, shard: tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.shard = None if shard is None or shard[1] == 1 else shard
        self.created = False
        self._locks: list[_Lock] = []
        name = "all" if self.shard is None else f"shard-{self.shard[0]}-of-{self.shard[1]}"
        self.temp = self.root / TEMP_NAME / name

    # -- holding the folder ------------------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"the output {self.root} is a file; give a folder (a new one, or one an earlier run wrote)")
        self.created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved = self.root.resolve()
        folder_lock = _Lock(self.root / LOCK_NAME, exclusive=self.shard is None)
        try:
            folder_lock.acquire(lambda: self._in_use([self.root / LOCK_NAME, *self._shard_locks()]))
            self._locks.append(folder_lock)
            if self.shard is not None:
                mine = self.root / f".kernelspace.shard-{self.shard[0]}-of-{self.shard[1]}.lock"
                shard_lock = _Lock(mine, exclusive=True)
                shard_lock.acquire(lambda: self._in_use([mine]))
                self._locks.append(shard_lock)
            self._clear_stale_temp()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)
        try:
            (self.root / TEMP_NAME).rmdir()  # only when no other shard is using it
        except OSError:
            pass
        self._release()
        if self.created:
            try:
                self.root.rmdir()  # a run that failed before writing anything leaves no empty folder behind
            except OSError:
                pass

    def _release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    def _shard_locks(self) -> list[Path]:
        return sorted(self.root.glob(".kernelspace.shard-*.lock"))

    def _in_use(self, files: list[Path]) -> str:
        return (f"{self.root} is in use by another kernelspace run ({_describe_holders(files)}); wait for it to "
                "finish or stop it, then run this command again")

    def _clear_stale_temp(self) -> None:
        """Remove what killed runs left in the temporary folder: all of it when this run holds the folder alone,
        else the unsharded run's and this shard's (other shards may be running)."""
        base = self.root / TEMP_NAME
        if base.is_symlink():
            raise ValueError(f"{base} is a symbolic link; kernelspace made no such link: remove it")
        stale = [base] if self.shard is None else [base / "all", self.temp]
        for path in stale:
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
        self.temp.mkdir(parents=True, exist_ok=True)

    # -- writing inside it -------------------------------------------------------------------------------------
    def confine(self, path: str | os.PathLike) -> Path:
        """``path`` (absolute, or relative to the folder) if writing or deleting it stays inside the folder: its
        parent folder resolves inside the folder, and it is no symbolic link; a ValueError otherwise.

        Example:
            >>> import tempfile, pathlib, os
            >>> tmp = pathlib.Path(tempfile.mkdtemp()); (tmp / "input").mkdir()
            >>> with OutputFolder(tmp / "out") as folder:
            ...     os.symlink(tmp / "input", tmp / "out" / "sub")
            ...     try:
            ...         folder.confine("sub/a.png")
            ...     except ValueError as err:
            ...         print("refused:", "outside the output folder" in str(err))
            refused: True
        """
        path = Path(path)
        path = path if path.is_absolute() else self.root / path
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; kernelspace only replaces files it wrote: remove the link "
                             "or choose another output folder")
        parent = path.parent.resolve()
        if parent != self._resolved and not parent.is_relative_to(self._resolved):
            raise ValueError(
                f"{path} lies outside the output folder {self.root} once links are resolved ({parent / path.name}); "
                "kernelspace writes only inside the output folder: remove the link or choose another output folder"
            )
        return path

    def temp_path(self, name: str) -> Path:
        """A fresh path in this run's temporary folder, ending in ``name`` (so that its suffix is kept)."""
        return self.temp / f"{secrets.token_hex(6)}.{name}"

    def place(self, tmp: Path, dst: str | os.PathLike) -> Path:
        """Move the finished file ``tmp`` (from :meth:`temp_path`) to ``dst``, durably and atomically."""
        dst = self.confine(dst)
        self.mkdir(dst.parent)
        if tmp.is_file():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, dst)
        sync_folder(dst.parent)
        return dst

    def mkdir(self, folder: Path) -> None:
        """Create ``folder`` (and its parents) inside the output folder."""
        self.confine(folder / "x")  # checks where the folder resolves before anything is created
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, dst: str | os.PathLike, *chunks: bytes | memoryview) -> Path:
        """Write ``chunks`` to ``dst`` through this run's temporary folder."""
        dst = self.confine(dst)
        tmp = self.temp_path(dst.name)
        with naming(dst), open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        return self.place(tmp, dst)

    def save_image(self, image: Any, dst: Path, **options: Any) -> Path:
        """:func:`kernelspace.io.save_image` (with its keyword ``options``) into this run's temporary folder, for
        ``dst``: returns the temporary file, to :meth:`place` once it is recorded."""
        with naming(self.confine(dst)):
            return save_image(image, self.temp_path(dst.name), **options)

    def remove_legacy_parts(self, dst: Path) -> None:
        """Delete the ``.NAME.*.part`` files that runs of earlier versions left beside ``dst`` when killed."""
        if dst.parent.is_dir():
            for part in dst.parent.glob(f".{glob.escape(dst.name)}.*.part"):
                self.confine(part).unlink(missing_ok=True)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an operating-system error that names no file (a full disk while PIL writes) the file meant."""
    try:
        yield
    except OSError as err:
        if err.filename or err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from err


# -- manifests ---------------------------------------------------------------------------------------------------
def read_manifest(path: Path, repair: bool) -> list[dict]:
    """The finished entries of a JSONL manifest. With ``repair`` (a manifest this run holds the lock for), a last
    line cut short by a kill is dropped from the file; other manifests are only read (their writers may be
    mid-line)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    try:
        return [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a kernelspace manifest ({err}); move it away or use a new folder") from None


def append_line(log: BinaryIO, entry: dict) -> None:
    """Append one manifest entry and make it durable before going on."""
    log.write((json.dumps(entry, sort_keys=True) + "\n").encode())
    log.flush()
    os.fsync(log.fileno())


def rewrite_manifest(folder: OutputFolder, path: Path, entries: list[dict]) -> None:
    """Replace the manifest ``path`` by ``entries`` atomically (e.g. without the lines later ones replaced)."""
    folder.write(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())


def recorded_files(entries: list[dict], files_of: Callable[[dict], dict[str, str]]) -> dict[str, set[str]]:
    """Every version of every file the manifest ``entries`` say the job wrote: relative path -> SHA-256s.
    ``files_of(entry)`` gives an entry's files (relative path -> SHA-256)."""
    recorded: dict[str, set[str]] = {}
    for entry in entries:
        for rel, digest in files_of(entry).items():
            recorded.setdefault(rel, set()).add(digest)
    return recorded


def compact_manifest(folder: OutputFolder, manifest: Path, files_of: Callable[[dict], dict[str, str]]) -> None:
    """One line per output: an output written again (redone) keeps only its last line, once the files in the
    folder are that line's (until then the older lines still vouch for the files there)."""
    entries = read_manifest(manifest, repair=False)
    last = {e["output"]: e for e in entries}
    if len(last) == len(entries):
        return

    def on_disk(entry: dict) -> bool:
        return all((folder.root / r).is_file() and file_sha256(folder.root / r) == h for r, h in files_of(entry).items())

    settled = {rel for rel, e in last.items() if on_disk(e)}
    rewrite_manifest(folder, manifest, [e for e in entries if e["output"] not in settled or last[e["output"]] is e])


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's configuration and weights: which model made a file."""
    digest = hashlib.sha256(json.dumps(getattr(model, "config", {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
