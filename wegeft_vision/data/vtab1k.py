"""VTAB-1k folder format: `<root>/<task>/{train800,val200,train800val200,test}.txt`, one `path label` per line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .manifests import SplitListing, read_text
from .registry import VTAB_SPLITS, VTAB_TASKS, vtab_task

Sample = tuple[str, int]


def task_dir(root: str | Path, task: str) -> Path:
    """The folder of `task` under `root`, trying the canonical name first, then its aliases.

    Args:
        root: the folder holding one sub-folder per task.
        task: a canonical name or alias; an unregistered name is looked up as given.

    Raises:
        FileNotFoundError: `root` or every candidate folder is missing; the message lists the names tried.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VTAB-1k root folder {root} does not exist")
    names = [task]
    if task.lower() in {a.lower() for t in VTAB_TASKS.values() for a in (t.name, *t.aliases)}:
        entry = vtab_task(task)
        names = [entry.name, *entry.aliases]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"missing folder for task {task!r} in {root}; tried {', '.join(names)}")


def split_path(folder: str | Path, split: str) -> Path:
    """The split file `<task folder>/<split>.txt`."""
    if split not in VTAB_SPLITS:
        raise ValueError(f"unknown VTAB-1k split {split!r}; expected one of {', '.join(VTAB_SPLITS)}")
    return Path(folder) / f"{split}.txt"


def parse_split_file(path: str | Path) -> SplitListing:
    """Parse a split file as written, line numbers kept; blank lines are skipped, paths are not judged.

    The label is the last space-separated field, so paths may contain spaces. A UTF-8 byte-order mark is dropped
    (`SplitListing.bom` says it was there).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bytes that are not UTF-8, a line without a label or with a label that is not a non-negative
            integer (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing split file {path}")
    text, bom = read_text(path)
    entries = []
    for number, line in enumerate(text.split("\n"), start=1):  # numbered as editors do (\r\n included)
        line = line.strip()
        if not line:
            continue
        rel, _, label = line.rpartition(" ")
        if rel and label.startswith("-") and label[1:].isascii() and label[1:].isdigit():
            raise ValueError(f"{path}:{number}: label {label} is negative; labels are class indices 0, 1, ... {line!r}")
        if not rel or not (label.isascii() and label.isdigit()):
            raise ValueError(f"{path}:{number}: expected 'relative/path label' with an integer label, got {line!r}")
        entries.append((number, rel.strip(), int(label)))
    return SplitListing(path, entries, bom)


def read_split_file(path: str | Path) -> list[Sample]:
    """The `(relative_path, label)` pairs of a split file (see `parse_split_file`); duplicates are kept as listed.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: as `parse_split_file`, and a path that is absolute or leaves the task folder (file and line named).
    """
    listing = parse_split_file(path)
    listing.require_inside_root()
    return listing.samples


def write_split_file(path: str | Path, samples: Iterable[Sample]) -> Path:
    """Write `(relative_path, label)` pairs as a split file (the inverse of `read_split_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {int(label)}\n" for rel, label in samples))
    return path


def load_vtab1k_split(root: str | Path, task: str, split: str) -> tuple[list[Sample], Path]:
    """The samples of one split and the task folder their paths are relative to.

    Args:
        root: the folder holding one sub-folder per task.
        task: canonical name, alias, or the folder name of a custom task (e.g. the synthetic data).
        split: one of `train800`, `val200`, `train800val200`, `test`.
    """
    folder = task_dir(root, task)
    return read_split_file(split_path(folder, split)), folder
