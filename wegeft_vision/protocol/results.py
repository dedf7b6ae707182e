"""`results.csv`: one row per finished or diverged run, appended atomically by any number of workers.

A crash mid-write can leave a torn last row (no final newline, or too few fields). Readers skip torn rows with a
`TornRowWarning`; the next `append_rows` moves them to `results.csv.torn` (nothing is thrown away) and rewrites the
file without them, so a new row is never glued to a fragment. A file of an earlier version (fewer columns) is upgraded
in place by the same atomic rewrite. A row lost that way is re-derived: rerunning the protocol on the same folder
appends the rows of every run that finished (from Optuna and the runs' `result.json`).

A row is also checked against its run's own record, `<folder>/<run_dir>/result.json` (`disagreements`): a value
edited by hand is neither kept nor overwritten without a word; the protocol and `report` refuse it by file, line and
column.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import append_durably, write_atomic

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
    "state",
    "reason",
    "best_top1",
    "best_epoch",
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
    "pack",
    "step_ms",
    "images_per_s",
    "peak_memory_mb",
)
KEY = ("benchmark", "task", "method", "stage", "seed", "lr", "weight_decay", "fingerprint")
STATES = ("finished", "diverged")  # diverged: loss or parameters became non-finite; `top1` empty, `reason` says why
FILL = {"state": "finished"}  # what an upgraded file's missing columns hold (others: empty)
TORN_SUFFIX = ".torn"
REDERIVE = "running the protocol again on the same --out re-derives its row (from Optuna and the run's result.json)"
RESULT_FILE = "result.json"  # a run's own record (`runs.train_run`): its spec and its row
SHOWN = 3  # disagreeing rows named in a message; the others are counted


class TornRowWarning(UserWarning):
    """A results file holds a torn row (a crash mid-write); it is no result."""


@dataclass
class Scan:
    """A results file split into its header, its complete rows and its torn rows, with their first line numbers."""

    header: list[str] = field(default_factory=list)
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    torn: list[tuple[int, str]] = field(default_factory=list)  # (line, raw text as in the file)


@dataclass(frozen=True)
class Disagreement:
    """A row of a results file that differs from its run's `result.json`: (column, file's value, run's value)."""

    line: int
    record: Path
    columns: tuple[tuple[str, str, str], ...]


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """What identifies a run: the same key twice is the same run (a rerun must not add it again)."""
    return tuple(str(row[k]) for k in KEY)


def scan_text(text: str, name: str = "results file") -> Scan:
    """Split CSV text into header, rows and torn rows.

    A row is torn when it is the last one and lacks its final newline, when its quoting is broken (e.g. cut inside a
    quoted field) or when its number of fields differs from the header's. Blank lines are skipped.

    Raises:
        ValueError: the header itself is malformed (the file is not a results file); the message names `name`.
    """
    scan = Scan()
    lines = iter(io.StringIO(text, newline=""))
    consumed = 0
    raw: list[str] = []

    def counted():  # the lines the csv reader pulls, kept so that a torn row can be saved as it was
        nonlocal consumed
        for line in lines:
            consumed += 1
            raw.append(line)
            yield line

    source = counted()
    while True:
        start = consumed + 1
        raw.clear()
        try:
            fields = next(csv.reader(source, strict=True))  # one record; the shared generator keeps the position
        except StopIteration:
            return scan
        except csv.Error:
            broken = True
        else:
            broken = not raw[-1].endswith(("\n", "\r"))
        if not broken and not fields:
            continue
        if not scan.header and not scan.torn:
            if broken and raw and raw[-1].endswith(("\n", "\r")):
                raise ValueError(f"{name}, line {start}: malformed CSV header {''.join(raw).strip()!r}")
            if not broken:
                scan.header = fields
                continue
        if broken or len(fields) != len(scan.header):
            scan.torn.append((start, "".join(raw)))
        else:
            scan.rows.append((start, fields))


def scan_file(path: str | Path) -> Scan:
    """`scan_text` of a file (UTF-8; undecodable bytes, e.g. a character cut in two, kept as they were)."""
    return scan_text(Path(path).read_bytes().decode("utf-8", "surrogateescape"), str(path))


def torn_message(path: str | Path, line: int, action: str) -> str:
    """One line on a torn row: where, what was done with it, and how its run comes back."""
    return f"{path}, line {line}: torn row (a crash mid-write?) {action}; it is no result; {REDERIVE}"


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The complete rows of a results file as strings (an absent file has none); torn rows are skipped with a
    `TornRowWarning`."""
    path = Path(path)
    if not path.is_file():
        return []
    scan = scan_file(path)
    for line, _ in scan.torn:
        warnings.warn(torn_message(path, line, "skipped"), TornRowWarning, stacklevel=2)
    return [dict(zip(scan.header, fields, strict=True)) for _, fields in scan.rows]


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append the rows whose key is not in the file yet; returns how many were written.

    An exclusive `flock` serializes workers on one machine. A plain append is one `O_APPEND` write (retried on a
    short write), fsync'd, and cut back on failure, so the file stays valid on a full disk. A file with torn rows or
    the columns of an earlier version is first repaired: torn rows go to `<file>.torn`, the rest (upgraded to
    `COLUMNS`, missing `state` read as `finished`) and the new rows replace the file atomically.

    A row without `state` is a finished one; a `diverged` row is written with an empty `top1`.

    Raises:
        ValueError: a row's `state` is unknown or a finished row lacks a finite `top1`; the file has columns this
            version does not know.
        WriteError: the disk is full (or another write error); the file holds what it held before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = [_checked(row, path) for row in rows]
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                return _append_locked(fd, path, new)
            # another worker replaced the file (repair or upgrade) while this one waited: lock the new one
        finally:
            os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def _checked(row: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The row with every column (missing ones empty), its `state` filled in and checked against `top1`."""
    out = {name: row.get(name, "") for name in COLUMNS}
    out["state"] = out["state"] or "finished"  # rows of code that predates `state` are finished runs
    if out["state"] not in STATES:
        raise ValueError(f"{path}: unknown state {out['state']!r} in run {row_key(out)}; expected one of {STATES}")
    if out["state"] == "diverged":
        out["top1"] = ""
    elif not _finite(out["top1"]):
        raise ValueError(f"{path}: finished run {row_key(out)} has top1 {out['top1']!r}; expected a finite number")
    return {name: "" if value is None else value for name, value in out.items()}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _append_locked(fd: int, path: Path, new: list[dict[str, Any]]) -> int:
    with open(fd, "rb", closefd=False) as handle:
        data = handle.read()
    text = data.decode("utf-8", "surrogateescape")
    scan = scan_text(text, str(path))
    header = scan.header or list(COLUMNS)
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or len(set(header)) != len(header):
        detail = f"unknown column(s) {', '.join(unknown)}" if unknown else "repeated column(s)"
        raise ValueError(
            f"{path}: {detail}; this version writes {', '.join(COLUMNS)}: use another --out or remove the column(s)"
        )
    existing = []
    for _, fields in scan.rows:
        values = dict(zip(header, fields, strict=True))
        existing.append({name: values.get(name, FILL.get(name, "")) for name in COLUMNS})
    seen = {row_key(row) for row in existing}
    fresh = []
    for row in new:
        if (key := row_key(row)) not in seen:
            fresh.append(row)
            seen.add(key)
    if scan.torn or (text.strip() and header != list(COLUMNS)) or (text and not scan.header):
        _repair(path, scan, existing + fresh)
    elif fresh:
        append_durably(fd, _csv(fresh, header=not data).encode(), path, f"appending {len(fresh)} row(s)")
    return len(fresh)


def _repair(path: Path, scan: Scan, rows: list[dict[str, Any]]) -> None:
    """Save the torn rows beside the file, then replace the file by the header and `rows` (atomically)."""
    side = path.with_name(path.name + TORN_SUFFIX)
    if scan.torn:
        text = "".join(raw if raw.endswith(("\n", "\r")) else raw + "\n" for _, raw in scan.torn)
        fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            append_durably(fd, text.encode("utf-8", "surrogateescape"), side, "saving torn rows")
        finally:
            os.close(fd)
    write_atomic(path, _csv(rows, header=True).encode("utf-8", "surrogateescape"))
    for line, _ in scan.torn:
        warnings.warn(torn_message(path, line, f"moved to {side}"), TornRowWarning, stacklevel=3)


def _csv(rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def disagreements(path: str | Path, scan: Scan | None = None) -> list[Disagreement]:
    """The rows of a results file whose values differ from their run's record, `<folder>/<run_dir>/result.json`.

    Rows whose run folder or record is not there (a copied file, a run folder removed) are not checked, nor rows whose
    folder now holds a run of another fingerprint (changed data: the new run reuses the folder, the old row stays).

    Args:
        path: the results file; run folders are read relative to its folder (the protocol's `--out`).
        scan: the file's `scan_file`, when the caller has it already.
    """
    path = Path(path)
    if scan is None:
        if not path.is_file():
            return []
        scan = scan_file(path)
    found = []
    for line, fields in scan.rows:
        row = dict(zip(scan.header, fields, strict=True))
        if not row.get("run_dir"):
            continue
        record = path.parent / row["run_dir"] / RESULT_FILE
        saved = _recorded_row(record)
        if saved is None or _text(saved.get("fingerprint")) != row.get("fingerprint", ""):
            continue
        differ = tuple(
            (name, row[name], _text(saved[name]))
            for name in COLUMNS
            if name != "run_dir" and name in row and name in saved and row[name] != _text(saved[name])
        )
        if differ:
            found.append(Disagreement(line, record, differ))
    return found


def disagreement_message(path: str | Path, found: list[Disagreement], way_out: str) -> str:
    """One line naming each disagreeing row (file, line, column, both values; the first `SHOWN`), then `way_out`."""
    named = []
    for item in found[:SHOWN]:
        values = ", ".join(
            f"column {name!r} holds {mine!r} where the run recorded {theirs!r}" for name, mine, theirs in item.columns
        )
        named.append(f"{path}, line {item.line}: {values} ({item.record})")
    more = f"; and {len(found) - SHOWN} more row(s)" if len(found) > SHOWN else ""
    return f"{'; '.join(named)}{more}: edited by hand? {way_out}"


def check_against_runs(path: str | Path, way_out: str) -> None:
    """Refuse a results file that disagrees with its runs' records (see `disagreements`).

    Raises:
        ValueError: some row differs from its run's `result.json`; the message names each (file, line, column, both
            values) and ends with `way_out`.
    """
    found = disagreements(path)
    if found:
        raise ValueError(disagreement_message(path, found, way_out))


def _recorded_row(record: Path) -> dict[str, Any] | None:
    """The row in a run's `result.json`, or None when there is none to compare with (absent or unreadable)."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    row = saved.get("row") if isinstance(saved, dict) else None
    return row if isinstance(row, dict) else None


def _text(value: Any) -> str:
    """A value as `append_rows` writes it into the file."""
    return "" if value is None else str(value)
