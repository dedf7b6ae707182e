"""Files, the one leaf every package uses: digests, writes that survive crashes and full disks, and safe loading.

`write_atomic` (and `atomic_path` for writers that need a file name) is for files written as a whole (`result.json`,
`protocol.json`, adapters, manifests, report tables): readers see the old file or the new one, never a mix.
`append_durably` is for append-only files (`results.csv`): the bytes land entirely or, on an error, the file is cut
back to its length before the append. `safe_torch_load` reads a PyTorch file without running anything stored in it.
Imports nothing from the package (torch only when a PyTorch file is read).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import os
import pickle
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_DISK_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}


class WriteError(OSError):
    """A write that could not complete (disk full, quota, file size limit, I/O error); files were left valid.

    Its text is the message alone (no `[Errno N]` prefix), so the CLI prints one readable line.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def describe(error: OSError) -> str:
    """`disk full (No space left on device)` for the errors of a full disk, else the errno's text."""
    text = error.strerror or os.strerror(error.errno or 0)
    label = _DISK_ERRORS.get(error.errno)
    return f"{label} ({text})" if label else text


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written: a short write goes on with the rest; no progress raises `OSError`."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself has happened
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for a writer that needs a file name (safetensors, a memory map); once the block
    ends, the file is fsync'd and renamed over `path` (then the folder is fsync'd). On any error the temporary file is
    removed and `path` is untouched.

    Raises:
        WriteError: the write failed (disk full, quota, file size limit, I/O); the message names `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        message = f"{path}: {describe(err)} while writing it; the previous file is unchanged"
        raise WriteError(err.errno, message) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace `path` by `data` (text is written as UTF-8) so that readers see the old file or the new one
    (`atomic_path`). A new file gets the permissions of `open` (0o666 less the umask).

    Raises:
        WriteError: the write failed (disk full, quota, file size limit, I/O); the message names `path`.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_all(fd, payload)
        finally:
            os.close(fd)


def append_durably(fd: int, data: bytes, path: str | Path, what: str) -> None:
    """Append `data` to the open file `fd` (of `path`) and fsync; on failure, cut the file back and raise.

    The caller holds whatever lock keeps other writers out, so the file's length before the append is the length to
    return to.

    Args:
        fd: a file descriptor opened for writing (`O_APPEND` or positioned at the end).
        data: the bytes to append.
        path: the file's name, for the message.
        what: what was being appended, for the message (e.g. "appending 3 row(s)").

    Raises:
        WriteError: the write or the fsync failed; the file holds exactly what it held before.
    """
    start = os.fstat(fd).st_size
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as err:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as undo:
            raise WriteError(
                err.errno, f"{path}: {describe(err)} while {what}, and cutting the file back failed ({describe(undo)})"
            ) from err
        raise WriteError(err.errno, f"{path}: {describe(err)} while {what}; the file was left as it was") from err


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock (`flock`) on `path`, created if missing, for the block: processes sharing a folder take
    turns (as they do for `results.csv`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# What a PyTorch file may hold besides tensors, containers and numbers: timm training checkpoints (and the WeGeFT
# authors' released ones) keep their command-line arguments as an `argparse.Namespace`.
SAFE_GLOBALS = (argparse.Namespace,)


class UnsafePickle(ValueError):
    """A PyTorch file whose pickle asks for objects beyond tensors, containers, numbers and `SAFE_GLOBALS`."""


class UnreadableFile(ValueError):
    """A file the PyTorch reader cannot read (damaged, or another format)."""


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` on the CPU with `SAFE_GLOBALS` allowed: nothing stored in the file runs.

    Raises:
        UnsafePickle: the pickle asks for another object (its message: which one).
        UnreadableFile: the file does not read (its message: the reader's first line).
    """
    import torch

    try:
        allowed = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before, tensors only
        with warnings.catch_warnings(), allowed(list(SAFE_GLOBALS)) if allowed else contextlib.nullcontext():
            warnings.simplefilter("ignore")  # e.g. the pickle protocol of a file written by pickle, not torch.save
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Please use|\n\n|$)", str(err), re.DOTALL)
        detail = " ".join(found.group(1).split()) if found else ""
        if not detail or detail.startswith("Unsupported operand"):  # not a pickle it reads: damaged or foreign bytes
            raise UnreadableFile(f"not a PyTorch file ({detail or 'not a pickle'})") from err
        raise UnsafePickle(detail) from err
    except Exception as err:  # whatever a damaged or foreign file makes the reader raise
        raise UnreadableFile(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from err
