"""Small files that survive crashes and full disks: whole-file replacement and appends that leave the file as it was.

`write_atomic` is for files rewritten as a whole (`result.json`, `protocol.json`, `selection.json`, report tables):
readers see the old file or the new one, never a mix. `append_durably` is for append-only files (`results.csv`): the
bytes land entirely or, on an error, the file is cut back to its length before the append.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

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


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Replace `path` by `data` (text is written as UTF-8) so that readers see the old file or the new one.

    A temporary file in the same folder is written in full, fsync'd and renamed over `path` (then the folder is
    fsync'd); on any error the temporary file is removed and `path` is untouched. A new file gets the permissions of
    `open` (0o666 less the umask).

    Raises:
        WriteError: the write failed (disk full, quota, file size limit, I/O); the message names `path`.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            write_all(fd, payload)
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
