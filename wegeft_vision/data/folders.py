"""A user's own images as a task: a folder in the VTAB-1k layout or in torchvision's ImageFolder layout.

- VTAB-1k layout: `<folder>/{train800,val200,train800val200,test}.txt`, one `relative/path label` per line; class
  names from an optional `classes.txt` (one per line), else the label numbers.
- ImageFolder layout: `<folder>/{train,val,test}/<class>/<image>`; the classes are the sub-folders of `train/`
  (sorted, as torchvision orders them); `val/` and `test/` may hold fewer, never others.

On first use a manifest (`<folder>/manifest.yaml`: benchmark `custom`, layout, classes, counts, and per split the
sha256 of its split file or, for ImageFolder, of its file listing) is written beside the data; later runs and
`wegeft-vision data check FOLDER` compare the data against it. Such tasks are reported under their own heading,
grouped by the manifest's optional `group`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..files import sha256_of
from .class_folders import class_names, scan_split
from .manifests import Manifest, SplitEntry, read_manifest, read_text, write_manifest
from .registry import BENCHMARKS, CUSTOM, IMAGEFOLDER, IMAGEFOLDER_SPLITS, VTAB1K, VTAB_SPLITS
from .vtab1k import parse_split_file

MANIFEST_FILE = "manifest.yaml"
CLASSES_FILE = "classes.txt"
_BENCHMARK_PREFIXES = {*BENCHMARKS, "vtab", "vtab1k"}


def is_folder_ref(ref: str | Path) -> bool:
    """Whether a task reference is a folder path rather than `BENCHMARK/NAME` or a registry name.

    A path starts with `.`, `/` or `~`, or holds a `/` after a first part that is not a benchmark name
    (write `./vtab-1k/x` for a folder that a benchmark name begins).
    """
    text = str(ref)
    if isinstance(ref, Path) or text.startswith((".", "/", "~")):
        return True
    return "/" in text and text.split("/")[0].lower() not in _BENCHMARK_PREFIXES


def detect_layout(folder: str | Path) -> str:
    """`vtab-1k` (split files) or `imagefolder` (`train/`, `val/`, `test/` folders) for a task folder.

    Raises:
        FileNotFoundError: the folder does not exist, or holds neither layout (the message says what is missing).
        NotADirectoryError: a file where the folder should be.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"task folder {folder} is a file: give the folder that holds the task's splits")
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {folder} does not exist")
    split_files = [s for s in VTAB_SPLITS if (folder / f"{s}.txt").is_file()]
    split_dirs = [s for s in IMAGEFOLDER_SPLITS if (folder / s).is_dir()]
    if len(split_files) == len(VTAB_SPLITS):
        return VTAB1K
    if len(split_dirs) == len(IMAGEFOLDER_SPLITS):
        return IMAGEFOLDER
    if split_files:
        missing = [f"{s}.txt" for s in VTAB_SPLITS if s not in split_files]
        raise FileNotFoundError(f"task folder {folder} (VTAB-1k layout) lacks {', '.join(missing)}")
    if split_dirs:
        missing = [f"{s}/" for s in IMAGEFOLDER_SPLITS if s not in split_dirs]
        raise FileNotFoundError(f"task folder {folder} (ImageFolder layout) lacks {', '.join(missing)}")
    raise FileNotFoundError(
        f"task folder {folder} holds neither the VTAB-1k layout ({', '.join(s + '.txt' for s in VTAB_SPLITS)}) "
        f"nor the ImageFolder layout (train/, val/, test/ with one sub-folder per class)"
    )


def imagefolder_split(folder: str | Path, split: str, classes: tuple[str, ...]) -> list[tuple[str, int]]:
    """`(path relative to the task folder, class index)` of one ImageFolder split, sorted (`class_folders.scan_split`).

    Raises:
        FileNotFoundError: the split folder is missing.
        ValueError: a class folder that is not one of `classes`, or what makes the split unusable (a link loop, an
            unreadable folder or image, the same image in two classes, a training class without images), named.
        PermissionError: the split folder cannot be read.
    """
    scan = scan_split(folder, split, classes)
    scan.raise_errors()
    return scan.samples


def listing_sha256(samples: list[tuple[str, int]]) -> str:
    """The sha256 of a split's listing (`path label` lines): changes when images are added, removed or moved."""
    return hashlib.sha256("".join(f"{rel} {label}\n" for rel, label in samples).encode()).hexdigest()


def describe_folder(folder: str | Path, group: str | None = None, source: dict[str, Any] | None = None) -> Manifest:
    """Scan a task folder and describe it: layout, classes, counts and checksums (see the module docstring).

    Args:
        folder: the task folder; its name becomes the task's name.
        group: an optional group for the report (e.g. `natural`, `specialized`, `structured`).
        source: free-form provenance kept in the manifest.
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    splits: dict[str, SplitEntry] = {}
    if layout == IMAGEFOLDER:
        train = folder / "train"
        classes = tuple(class_names(train))
        if not classes:
            raise ValueError(f"{train} holds no class folders")
        for split in IMAGEFOLDER_SPLITS:
            samples = imagefolder_split(folder, split, classes)
            splits[split] = SplitEntry(split, split, len(samples), sha256=listing_sha256(samples))
    else:
        labels = set()
        for split in VTAB_SPLITS:  # paths are judged by `data check` and on loading, not here
            samples = parse_split_file(folder / f"{split}.txt").samples
            labels |= {label for _, label in samples}
            splits[split] = SplitEntry(split, f"{split}.txt", len(samples), sha256=sha256_of(folder / f"{split}.txt"))
        names_file = folder / CLASSES_FILE
        names = (
            [line.strip() for line in read_text(names_file)[0].splitlines() if line.strip()]
            if names_file.is_file()
            else []
        )
        if names and len(names) <= max(labels):
            raise ValueError(f"{names_file} names {len(names)} classes, but the split files use label {max(labels)}")
        classes = tuple(names) or tuple(str(i) for i in range(max(labels) + 1))
    return Manifest(
        benchmark=CUSTOM,
        name=folder.name,
        num_classes=len(classes),
        splits=splits,
        group=group,
        source=source or {},
        layout=layout,
        classes=classes,
        folder=str(folder.resolve()),
    )


def open_folder(folder: str | Path, group: str | None = None, source: dict[str, Any] | None = None) -> Manifest:
    """The manifest of a task folder: read from `<folder>/manifest.yaml`, or described and written there first.

    Raises:
        FileNotFoundError: the folder is missing or holds neither layout.
        ValueError: the folder's manifest is not a custom task's.
    """
    folder = Path(folder).expanduser()
    path = folder / MANIFEST_FILE
    if not path.is_file():
        detect_layout(folder)  # a clear error before anything is written
        write_manifest(describe_folder(folder, group, source), path, header=f"task folder {folder.name}")
    manifest = read_manifest(path)
    if manifest.benchmark != CUSTOM:
        raise ValueError(f"{path} describes a {manifest.benchmark} task, not a custom folder (benchmark: {CUSTOM})")
    return manifest


def update_manifest(folder: str | Path) -> Manifest:
    """Describe a task folder as it is now and write its manifest again, keeping the group and source of the one
    there (`wegeft-vision data check FOLDER --update-manifest`): after a change made on purpose, or for a copy."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST_FILE
    earlier = read_manifest(path) if path.is_file() else None
    described = describe_folder(folder, earlier.group if earlier else None, earlier.source if earlier else None)
    write_manifest(described, path, header=f"task folder {folder.name}")
    return read_manifest(path)
