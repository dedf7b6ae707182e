"""`results.csv`: one row per finished run, appended atomically by any number of workers, never rewritten."""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

COLUMNS = (
    "benchmark",
    "task",
    "group",
    "method",
    "stage",
    "lr",
    "weight_decay",
    "seed",
    "epochs",
    "top1",
    "params",
    "backbone",
    "preset",
    "schedule_epochs",
    "weights",
    "preprocessing",
    "train_splits",
    "eval_split",
    "eval_size",
    "batch_size",
    "precision",
    "fingerprint",
    "run_dir",
    "finished_at",
)
KEY = ("benchmark", "task", "method", "stage", "seed", "lr", "weight_decay", "fingerprint")


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """What identifies a run: the same key twice is the same run (a rerun must not add it again)."""
    return tuple(str(row[k]) for k in KEY)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append the rows whose key is not in the file yet; returns how many were written.

    An exclusive `flock` serializes workers on one machine; each append is one `write` to an `O_APPEND` file, so a
    reader never sees half a row. The header is written with the first row.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            existing = list(csv.DictReader(handle))
            if existing and list(existing[0]) != list(COLUMNS):
                raise ValueError(f"{path}: columns {list(existing[0])} differ from this version's {list(COLUMNS)}")
            seen = {row_key(row) for row in existing}
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
            if handle.tell() == 0:
                writer.writeheader()
            written = 0
            for row in rows:
                key = row_key(row)
                if key not in seen:
                    writer.writerow({k: row.get(k, "") for k in COLUMNS})
                    seen.add(key)
                    written += 1
            if written:
                os.write(handle.fileno(), buffer.getvalue().encode())
                os.fsync(handle.fileno())
            return written
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results file as strings (an absent file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
