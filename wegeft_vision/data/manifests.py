"""Split manifests (`data_splits/*.yaml`): where each split file comes from, its sha256, and the expected counts; and
what every split file must be (strict UTF-8 text whose paths stay inside the dataset's folder)."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..files import write_atomic
from .registry import CUSTOM, FGVC, IMAGEFOLDER, VTAB1K, parse_target, splits_of

BUNDLED_MANIFEST_DIR = Path(str(files("wegeft_vision.data_splits")))  # the repository's data_splits/, as package data


def default_manifest_dir() -> Path:
    """The manifests to use: `$WEGEFT_DATA_SPLITS` when set, else the bundled ones (the repository's `data_splits/`)."""
    return Path(os.environ.get("WEGEFT_DATA_SPLITS") or BUNDLED_MANIFEST_DIR)


@dataclass(frozen=True)
class SplitEntry:
    """One split of a manifest: the file holding it, its expected line/entry count, and optional source and hash."""

    name: str
    file: str
    count: int
    num_classes: int | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What a dataset or task on disk should look like; loaded from a YAML file."""

    benchmark: str
    name: str
    num_classes: int
    splits: dict[str, SplitEntry]
    image_folder: str = ""
    group: str | None = None
    aliases: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    layout: str = ""
    classes: tuple[str, ...] = ()
    folder: str = ""  # a folder of one's own: the folder it was written for (a copy or a move is told by it)

    @property
    def format(self) -> str:
        """The on-disk layout: the benchmark's own, or a custom folder's `layout` (`vtab-1k` or `imagefolder`)."""
        return self.layout or self.benchmark

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (what `write_manifest` saves)."""
        out: dict[str, Any] = {"benchmark": self.benchmark, "name": self.name, "num_classes": self.num_classes}
        if self.layout:
            out["layout"] = self.layout
        if self.folder:
            out["folder"] = self.folder
        if self.classes:
            out["classes"] = list(self.classes)
        if self.group:
            out["group"] = self.group
        if self.aliases:
            out["aliases"] = list(self.aliases)
        if self.benchmark == FGVC:
            out["image_folder"] = self.image_folder
        if self.source:
            out["source"] = self.source
        out["splits"] = {
            s.name: {k: v for k, v in vars(s).items() if k != "name" and v is not None} for s in self.splits.values()
        }
        return out


def _field(raw: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise ValueError(f"manifest {where} lacks the field {key!r}")
    if not isinstance(raw[key], kind):
        raise ValueError(f"manifest {where}: field {key!r} should be {kind}, got {raw[key]!r}")
    return raw[key]


def parse_manifest(raw: Any, where: str = "<memory>") -> Manifest:
    """A `Manifest` from its YAML mapping, validated.

    Args:
        raw: the parsed YAML.
        where: the file name used in error messages.

    Raises:
        ValueError: a missing or mistyped field, an unknown benchmark, or a split the benchmark does not have.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"manifest {where} should hold a mapping, got {type(raw).__name__}")
    benchmark = _field(raw, "benchmark", str, where)
    name, num_classes = _field(raw, "name", str, where), _field(raw, "num_classes", int, where)
    layout = raw.get("layout", "")
    if benchmark == CUSTOM and layout not in (VTAB1K, IMAGEFOLDER):
        raise ValueError(f"manifest {where}: a custom task needs `layout: {VTAB1K}` or `layout: {IMAGEFOLDER}`")
    classes = tuple(str(c) for c in raw.get("classes") or ())
    if classes and len(classes) != num_classes:
        raise ValueError(f"manifest {where}: {len(classes)} class names for num_classes {num_classes}")
    try:
        expected_splits = splits_of(layout or benchmark)
    except ValueError as err:
        raise ValueError(f"manifest {where}: {err}") from None
    splits = {}
    for split, entry in _field(raw, "splits", dict, where).items():
        if split not in expected_splits:
            raise ValueError(f"manifest {where}: split {split!r} is not one of {', '.join(expected_splits)}")
        if not isinstance(entry, dict):
            raise ValueError(f"manifest {where}: split {split!r} should be a mapping, got {entry!r}")
        default_file = {VTAB1K: f"{split}.txt", FGVC: f"{split}.json", IMAGEFOLDER: split}[layout or benchmark]
        splits[split] = SplitEntry(
            name=split,
            file=str(entry.get("file", default_file)),
            count=_field(entry, "count", int, f"{where} (split {split})"),
            num_classes=entry.get("num_classes"),
            url=entry.get("url"),
            sha256=entry.get("sha256"),
        )
    missing = [s for s in expected_splits if s not in splits]
    if missing:
        raise ValueError(f"manifest {where} lacks the split(s) {', '.join(missing)}")
    return Manifest(
        benchmark=benchmark,
        name=name,
        num_classes=num_classes,
        splits=splits,
        image_folder=str(raw.get("image_folder", "")),
        group=raw.get("group"),
        aliases=tuple(raw.get("aliases", ())),
        source=dict(raw.get("source", {})),
        layout=layout,
        classes=classes,
        folder=str(raw.get("folder", "")),
    )


def read_manifest(path: str | Path) -> Manifest:
    """Load one manifest file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid YAML or not a valid manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        raw = yaml.safe_load(read_text(path)[0])
    except yaml.YAMLError as err:
        raise ValueError(f"manifest {path} is not valid YAML: {err}") from err
    manifest = parse_manifest(raw, str(path))
    return Manifest(**{**vars(manifest), "path": path})


def manifest_path(ref: str, manifest_dir: str | Path | None = None) -> Path:
    """The bundled manifest file of `benchmark/name` (aliases allowed)."""
    benchmark, name = parse_target(ref)
    prefix = "vtab1k" if benchmark == VTAB1K else "fgvc"
    return Path(manifest_dir or default_manifest_dir()) / f"{prefix}_{name}.yaml"


def load_manifest(ref: str, manifest_dir: str | Path | None = None) -> Manifest:
    """The manifest of a dataset reference such as `vtab-1k/cifar100` or `fgvc/cub`, or of a `.yaml` path.

    Args:
        ref: `benchmark/name` (canonical names and aliases) or the path of a manifest file.
        manifest_dir: folder of the bundled manifests (default: the repository's `data_splits/`).

    Raises:
        ValueError: an unknown benchmark or name, or an invalid manifest.
        FileNotFoundError: no manifest file for the reference.
    """
    if ref.endswith((".yaml", ".yml")):
        return read_manifest(ref)
    path = manifest_path(ref, manifest_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no manifest for {ref} at {path}; pass the manifest file explicitly or set WEGEFT_DATA_SPLITS"
        )
    return read_manifest(path)


def write_manifest(manifest: Manifest, path: str | Path, header: str | None = None) -> Path:
    """Save a manifest as YAML (with an optional comment line on top) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {header}\n" if header else ""
    write_atomic(path, text + yaml.safe_dump(manifest.to_dict(), sort_keys=False, width=120))
    return path


BOM = b"\xef\xbb\xbf"
Entry = tuple[int, str, Any]  # (line number, relative path as written, label)


def read_text(path: str | Path) -> tuple[str, bool]:
    """The text of a UTF-8 file, and whether it began with a byte-order mark (which is dropped, never read as part of
    the first path).

    Raises:
        ValueError: bytes that are not UTF-8; the message names the file, line and byte offset.
    """
    data = Path(path).read_bytes()
    bom = data.startswith(BOM)
    try:
        return data[len(BOM) if bom else 0 :].decode("utf-8"), bom
    except UnicodeDecodeError as err:
        offset = err.start + (len(BOM) if bom else 0)
        line = data[:offset].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); save the file as UTF-8"
        ) from None


def sample_id(rel: str) -> str:
    """The identity of a listed image: its relative path normalized (`./a/../b.png` and `b.png` are one sample)."""
    return posixpath.normpath(rel)


def outside_root(rel: str) -> str | None:
    """Why the relative path `rel` would read outside the dataset's folder (absolute, or `..` above it), or None."""
    if rel.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", rel):  # a POSIX or Windows root (C:/, \\server)
        return f"path {rel!r} is absolute; expected a path relative to the dataset's folder"
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        return f"path {rel!r} leaves the dataset's folder ('..')"
    return None


@dataclass(frozen=True)
class SplitListing:
    """One split file as written: `(line, relative path, label)` per entry, and whether it began with a UTF-8 BOM.

    Symbolic links are followed: a link is the dataset owner's own choice (e.g. images kept on another disk).
    """

    file: Path
    entries: list[Entry]
    bom: bool = False

    @property
    def samples(self) -> list[tuple[str, Any]]:
        return [(rel, label) for _, rel, label in self.entries]

    def outside_root(self) -> list[tuple[Entry, str]]:
        """The entries whose path is absolute or climbs above the dataset's folder, each with the reason."""
        found = ((entry, outside_root(entry[1])) for entry in self.entries)
        return [(entry, reason) for entry, reason in found if reason is not None]

    def duplicates(self) -> list[tuple[Entry, int]]:
        """The entries whose (normalized) path an earlier line already lists, each with that earlier line."""
        first: dict[str, int] = {}
        out = []
        for entry in self.entries:
            line = first.setdefault(sample_id(entry[1]), entry[0])
            if line != entry[0]:
                out.append((entry, line))
        return out

    def require_inside_root(self) -> None:
        """Raises ValueError (file and line named) for the first entry that would read outside the dataset's folder."""
        for (line, _, _), reason in self.outside_root():
            raise ValueError(f"{self.file}:{line}: {reason}")
