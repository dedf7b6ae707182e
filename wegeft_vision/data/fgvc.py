"""FGVC split files: JSON `{relative_image_path: label}` per split, one label map built from train for all splits."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .manifests import SplitListing, read_text
from .registry import FGVC_DATASETS, FGVC_SPLITS, fgvc_dataset

ClassId = int | str
Sample = tuple[str, int]


@dataclass(frozen=True)
class FGVCSplits:
    """The splits of one FGVC dataset with labels as contiguous indices into `class_ids` (the original ids)."""

    dataset: str
    class_ids: list[ClassId]
    splits: dict[str, list[Sample]]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __getitem__(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise KeyError(f"split {split!r} was not loaded for {self.dataset}; loaded: {', '.join(self.splits)}")
        return self.splits[split]


def canonical_name(dataset: str) -> str:
    """The registry name of a known dataset or alias; an unknown name (a custom dataset) is kept as given."""
    known = {a.lower() for d in FGVC_DATASETS.values() for a in (d.name, *d.aliases)}
    return fgvc_dataset(dataset).name if dataset.lower() in known else dataset


def split_file(splits_dir: str | Path, dataset: str, split: str) -> Path:
    """The JSON file of a split: `<splits_dir>/<dataset>/<split>.json` if present, else `<splits_dir>/<split>.json`.

    The first is the layout of the authors' repository and of `data fetch-splits`; the second the VPT layout, where
    the JSON files sit in the dataset's root folder.
    """
    if split not in FGVC_SPLITS:
        raise ValueError(f"unknown FGVC split {split!r}; expected one of {', '.join(FGVC_SPLITS)}")
    nested = Path(splits_dir) / canonical_name(dataset) / f"{split}.json"
    return nested if nested.is_file() else Path(splits_dir) / f"{split}.json"


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?')  # every string of a JSON text; group 1: it is a key


class _Pairs(list):
    """A JSON object as its `(key, value)` pairs in order, duplicates kept (`json.loads` keeps the last)."""


def _key_lines(text: str) -> list[int]:
    """The line of each object key of a JSON text, in order."""
    lines, line, at = [], 1, 0
    for match in _JSON_STRING.finditer(text):
        if match.group(1):
            line += text.count("\n", at, match.start())
            at = match.start()
            lines.append(line)
    return lines


def parse_split_file(path: str | Path) -> SplitListing:
    """One split file as written: `(line, relative_image_path, original_label)` per key, duplicate keys kept (a JSON
    object would keep only the last); paths are not judged. A UTF-8 byte-order mark is dropped (`SplitListing.bom`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not UTF-8, not JSON, not an object, or a label that is neither an integer nor a string.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing split file {path}")
    text, bom = read_text(path)
    try:
        raw = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON: {err}") from err
    if not isinstance(raw, _Pairs):
        kind = "object" if isinstance(raw, list) else type(raw).__name__
        raise ValueError(f"split file {path} should hold a JSON object {{image_path: label}}, got {kind}")
    for rel, label in raw:
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise ValueError(f"split file {path}: label of {rel!r} should be an integer or a string, got {label!r}")
    lines = _key_lines(text)
    if len(lines) != len(raw):  # cannot happen once labels are scalars; keep the entries, lose the lines
        lines = [0] * len(raw)
    return SplitListing(path, [(line, rel, label) for line, (rel, label) in zip(lines, raw, strict=True)], bom)


def read_split_file(path: str | Path) -> dict[str, ClassId]:
    """The raw `{relative_image_path: original_label}` mapping of one split file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: as `parse_split_file`; a key listed twice, or a path that is absolute or leaves the image folder
            (file and lines named).
    """
    listing = parse_split_file(path)
    repeated = listing.duplicates()
    if repeated:
        (line, rel, _), first = repeated[0]
        raise ValueError(f"{listing.file}:{line}: {rel!r} repeats the image of line {first}; a JSON object keeps one")
    listing.require_inside_root()
    return dict(listing.samples)


def class_ids_of(labels: Mapping[str, ClassId], where: str = "train split") -> list[ClassId]:
    """The sorted distinct class ids of a split (numeric order for ints, lexicographic for strings).

    Raises:
        ValueError: ints and strings mixed in one split.
    """
    ids = set(labels.values())
    if len({type(i) for i in ids}) > 1:
        raise ValueError(f"{where} mixes integer and string labels; expected one kind")
    return sorted(ids)


def encode(labels: Mapping[str, ClassId], class_ids: Sequence[ClassId], where: str) -> list[Sample]:
    """`(relative_path, class_index)` pairs under the label map `class_ids`.

    Raises:
        ValueError: a label absent from `class_ids`; the message names the file and the id.
    """
    index = {cid: i for i, cid in enumerate(class_ids)}
    samples = []
    for rel, label in labels.items():
        if label not in index:
            raise ValueError(f"{where}: label {label!r} (of {rel}) does not occur in the training split")
        samples.append((rel, index[label]))
    return samples


def load_fgvc_splits(dataset: str, splits_dir: str | Path, splits: Sequence[str] = FGVC_SPLITS) -> FGVCSplits:
    """Read the split files of `dataset` with one label map, built once from the training split.

    Class indices are positions in the sorted list of training class ids and are reused for val and test, so a split
    that lacks some classes (NABirds val holds 553 of 555) keeps the training indices.

    Args:
        dataset: canonical name or alias (`cub`, `nabirds`, ...), or the folder name of a custom dataset.
        splits_dir: folder holding `<dataset>/<split>.json` or `<split>.json`.
        splits: which splits to return (the training split is always read to build the label map).

    Raises:
        FileNotFoundError: a missing split file.
        ValueError: an invalid split file, or an id in val/test absent from train (file and id named).
    """
    name = canonical_name(dataset)
    train_path = split_file(splits_dir, name, "train")
    train = read_split_file(train_path)
    class_ids = class_ids_of(train, str(train_path))
    out = {}
    for split in splits:
        path = split_file(splits_dir, name, split)
        labels = train if split == "train" else read_split_file(path)
        out[split] = encode(labels, class_ids, str(path))
    return FGVCSplits(dataset=name, class_ids=class_ids, splits=out)


def image_dir(root: str | Path, dataset: str, image_folder: str | None = None) -> Path:
    """The folder the split paths are relative to: `<root>/<image folder of the dataset>`.

    Args:
        root: the dataset's root folder.
        dataset: the dataset name (used for the registry's image folder).
        image_folder: overrides the registry (`""` for the root itself); needed for custom datasets.
    """
    if image_folder is None:
        name = canonical_name(dataset)
        image_folder = FGVC_DATASETS[name].image_folder if name in FGVC_DATASETS else ""
    return Path(root) / image_folder if image_folder else Path(root)
