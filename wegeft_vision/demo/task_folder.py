"""How the demo writes a task folder: train800 / val200 / test split files and a manifest made as for a user's
folder (with its VTAB-1k group and how it was made)."""

from __future__ import annotations

from pathlib import Path

from ..data.folders import MANIFEST_FILE, open_folder
from ..data.vtab1k import write_split_file

SIZES = {"train800": 800, "val200": 200}


def write_splits(folder: Path, samples: list[tuple[str, int]], test: int) -> None:
    """train800, val200 and test from `samples` in order; train800val200 = train800 + val200."""
    train, val = samples[: SIZES["train800"]], samples[SIZES["train800"] : SIZES["train800"] + SIZES["val200"]]
    rest = samples[len(train) + len(val) :]
    if len(train) < SIZES["train800"] or len(val) < SIZES["val200"] or len(rest) < test:
        raise ValueError(f"{folder}: {len(samples)} samples do not fill 800 / 200 / {test}")
    for split, part in (("train800", train), ("val200", val), ("train800val200", train + val), ("test", rest[:test])):
        write_split_file(folder / f"{split}.txt", part)


def describe_folder(folder: Path, group: str, source: dict) -> None:
    """The folder's manifest, written afresh as for a user's folder (with its VTAB-1k group and how it was made)."""
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    open_folder(folder, group=group, source=source)
