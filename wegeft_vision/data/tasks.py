"""A task: one labelled image dataset on disk behind one object, whatever its kind and layout.

Kinds: a registered VTAB-1k task (`ROOT/<task>/{train800,val200,train800val200,test}.txt`, aliases tried), a
registered FGVC dataset (its folder, JSON split files, labels mapped from train), a task that brings its own manifest
(the synthetic data), and a folder of one's own (VTAB-1k or ImageFolder layout, see `data.folders`). A `Task` knows its
layout and splits, the samples of each split, its folders, the identity of its data (digests of its split files) and
the data arguments a run passes to `BenchmarkDataModule`; `data.check.check_task` checks it. Nothing outside `data/`
branches on the benchmark to find files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..files import sha256_of
from . import fgvc, vtab1k
from .folders import MANIFEST_FILE, imagefolder_split, is_folder_ref, listing_sha256, open_folder
from .manifests import Manifest, load_manifest, read_manifest
from .registry import CUSTOM, FGVC, FGVC_DATASETS, IMAGEFOLDER, VTAB1K, VTAB_TASKS, parse_target, protocol_splits
from .registry import splits_of as layout_splits
from .synthetic import synthetic_kind, synthetic_manifest

Samples = list[tuple[Path, int]]


@dataclass(frozen=True)
class Task:
    """One task and where its data lies. Build it with `open_task` (a run's or a user's arguments) or
    `data.lookup.find_task` (a folder holding one folder per task, as the protocol's `--data-root`).

    Attributes:
        benchmark: `vtab-1k`, `fgvc` or `custom` (a folder of one's own).
        name: the task's name (registry name, the manifest's name, or a folder's own name).
        manifest: what the data should look like (classes, split counts, checksums).
        root: VTAB-1k: the folder holding the task's folder; FGVC: the dataset's folder; custom: the task folder.
        splits_dir: FGVC: the folder of the JSON split files (None: `root`).
        manifest_file: the manifest file given for a task outside the registry (None: bundled, or a folder's own).
    """

    benchmark: str
    name: str
    manifest: Manifest = field(compare=False, repr=False)
    root: Path
    splits_dir: Path | None = None
    manifest_file: Path | None = None

    @property
    def ref(self) -> str:
        """`benchmark/name`, as results and messages name the task."""
        return f"{self.benchmark}/{self.name}"

    @property
    def layout(self) -> str:
        """The on-disk layout: `vtab-1k`, `fgvc` or `imagefolder`."""
        return self.manifest.format

    @property
    def group(self) -> str | None:
        """The report group from the manifest (VTAB-1k's natural/specialized/structured, or a folder's own)."""
        return self.manifest.group

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def splits(self) -> tuple[str, ...]:
        return layout_splits(self.layout)

    def split_sizes(self) -> dict[str, int]:
        """Expected samples per split (the manifest's counts; no file is read)."""
        return {name: entry.count for name, entry in self.manifest.splits.items()}

    def stage_splits(self, stage: str, final_includes_val: bool = False) -> tuple[tuple[str, ...], str]:
        """The training splits and the evaluation split of a protocol stage (`data.registry.protocol_splits`)."""
        return protocol_splits(self.layout, stage, final_includes_val)

    @cached_property
    def folder(self) -> Path:
        """The task's own folder (split files or class folders inside; FGVC: the dataset's folder).

        Raises:
            FileNotFoundError: it does not exist (a VTAB-1k task's canonical name and aliases tried).
        """
        if self.benchmark == VTAB1K:
            return vtab1k.task_dir(self.root, self.name)
        if not self.root.is_dir():
            what = "task folder" if self.benchmark == CUSTOM else f"folder of FGVC dataset {self.name}"
            raise FileNotFoundError(f"missing {what} {self.root}")
        return self.root

    @property
    def image_folder(self) -> Path:
        """The folder the samples' paths are relative to."""
        if self.layout == FGVC:
            return fgvc.image_dir(self.folder, self.name, self.manifest.image_folder)
        return self.folder

    def split_file(self, split: str) -> Path:
        """The file listing a split (ImageFolder: the split's folder)."""
        if self.layout == FGVC:
            return fgvc.split_file(self.splits_dir or self.folder, self.name, split)
        return self.folder / self.manifest.splits[split].file

    @cached_property
    def class_ids(self) -> list[Any]:
        """The original class ids by label index: FGVC's, mapped from the training split; else `0 .. n-1`."""
        if self.layout == FGVC:
            return fgvc.load_fgvc_splits(self.name, self.splits_dir or self.folder, splits=("train",)).class_ids
        return list(range(self.num_classes))

    def relative_samples(self, split: str) -> list[tuple[str, int]]:
        """`(path relative to image_folder, label)` of a split, as listed (ImageFolder: sorted)."""
        if self.layout == FGVC:
            return fgvc.load_fgvc_splits(self.name, self.splits_dir or self.folder, splits=(split,))[split]
        if self.layout == IMAGEFOLDER:
            return imagefolder_split(self.folder, split, self.manifest.classes)
        return vtab1k.read_split_file(self.split_file(split))

    def samples(self, split: str, allow_count_mismatch: bool = False) -> Samples:
        """`(image path, label)` of a split, checked against the manifest.

        Raises:
            FileNotFoundError: a missing folder or split file.
            ValueError: a count that differs from the manifest's (unless `allow_count_mismatch`), or a label outside
                the task's classes; the message names the split file.
        """
        images = self.image_folder
        samples = [(images / rel, label) for rel, label in self.relative_samples(split)]
        where = self.split_file(split)
        expected = self.manifest.splits[split].count
        if len(samples) != expected and not allow_count_mismatch:
            accept = "--set data.allow_count_mismatch=true (protocol), --data.allow_count_mismatch=true (fit)"
            way = (  # the command-line ways out
                f"describe the folder as it is now: wegeft-vision data check {self.root} --update-manifest"
                if self.benchmark == CUSTOM
                else f"accept it: {accept}"
            )
            raise ValueError(f"{where}: {len(samples):,} entries, expected {expected:,}; to {way}")
        bad = [(path, label) for path, label in samples if label >= self.num_classes]
        if bad:
            raise ValueError(f"{where}: label {bad[0][1]} of {bad[0][0]} is outside 0..{self.num_classes - 1}")
        return samples

    def split_digests(self) -> dict[str, str]:
        """Per split file (ImageFolder: per split listing) the sha256 of what decides which images a run sees with
        which labels; the keys name the file or listing. Image bytes are not read (`check` compares those).

        Raises:
            FileNotFoundError: a missing folder or split file.
        """
        if self.layout == IMAGEFOLDER:
            return {f"{split}/": listing_sha256(self.relative_samples(split)) for split in self.splits}
        files = [self.split_file(split) for split in self.splits]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.ref}: missing split file(s) {', '.join(missing)}")
        return {path.name: sha256_of(path) for path in files}

    def verify(self) -> None:
        """Refuse a folder of one's own whose splits changed since its manifest was written (split files, or an
        ImageFolder listing), also when the folder is a copy or a move of the one the manifest was written for; a task
        of a benchmark has nothing to verify here (`data check` compares it with its manifest).

        Raises:
            ValueError: naming the folder, the split that changed and the command that describes the folder anew.
        """
        if self.benchmark != CUSTOM:
            return
        recorded = self.manifest.folder or str(self.root)
        moved = f" ({self.root} is a copy or a move of it)" if recorded != str(self.root) else ""
        for split, (key, digest) in zip(self.splits, self.split_digests().items(), strict=True):
            entry = self.manifest.splits[split]
            if entry.sha256 and digest != entry.sha256:
                count = len(self.relative_samples(split))
                what = (
                    f"{count:,} images now, {entry.count:,} then" if count != entry.count else "as many, not the same"
                )
                raise ValueError(
                    f"{self.root / MANIFEST_FILE} was written for {recorded}{moved}; {key} has changed since ({what}); "
                    f"to describe the folder as it is now: wegeft-vision data check {self.root} --update-manifest"
                )

    def identity(self) -> str:
        """One sha256 over `split_digests`: equal for the same splits wherever the data lies."""
        lines = "".join(f"{name} {digest}\n" for name, digest in sorted(self.split_digests().items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def data_arguments(self) -> dict[str, str]:
        """The `BenchmarkDataModule` arguments that open this task again (`dataset`, and `root`, `splits_dir`,
        `manifest` where they apply): what a run's configuration holds."""
        if self.benchmark == CUSTOM:
            return {"dataset": str(self.root)}
        arguments = {"dataset": self.ref, "root": str(self.root)}
        if self.splits_dir is not None:
            arguments["splits_dir"] = str(self.splits_dir)
        if self.manifest_file is not None:
            arguments["manifest"] = str(self.manifest_file)
        return arguments


def open_task(
    dataset: str | Path,
    root: str | Path | None = None,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
) -> Task:
    """The task a run or a command names: `benchmark/name` (aliases accepted) with its data `root`, or a folder of
    one's own (its manifest written on first use). Nothing but a folder's manifest is read.

    Args:
        dataset: `vtab-1k/<task>`, `fgvc/<dataset>`, or a folder path. A name outside the registry needs
            `manifest`, or `manifest.yaml` in its folder (VTAB-1k: `ROOT/<name>/`, FGVC: `ROOT/`), as synthetic data.
        root: VTAB-1k: the folder of task folders; FGVC: the dataset's folder; unused for a folder path.
        splits_dir: FGVC: the folder of the JSON split files (default: `root`).
        manifest: a manifest (or its file) instead of the bundled one (a task outside the registry, e.g. synthetic
            data).

    Raises:
        ValueError: an unknown benchmark or name, a manifest of another benchmark, a folder given a manifest, or no
            `root` where one is needed.
        FileNotFoundError: a folder of one's own that is missing or holds neither layout; a missing manifest file.
    """
    if is_folder_ref(dataset):
        if manifest is not None:
            raise ValueError(f"{dataset} is a task folder with its own {MANIFEST_FILE}; drop manifest={manifest}")
        folder = Path(dataset).expanduser().resolve()
        return Task(CUSTOM, folder.name, open_folder(folder), folder)
    benchmark, name = parse_target(str(dataset), strict=False)
    registered = name in (VTAB_TASKS if benchmark == VTAB1K else FGVC_DATASETS)
    if manifest is None and not registered and root is not None:  # a task that brings its own, as synthetic data
        own = (Path(root) / name if benchmark == VTAB1K else Path(root)) / MANIFEST_FILE
        manifest = own if own.is_file() else None
    if manifest is None and not registered:
        try:
            parse_target(str(dataset))
        except ValueError as err:
            raise ValueError(f"{err}; for a task outside the registry give its manifest file") from None
    if isinstance(manifest, Manifest):
        described, manifest = manifest, manifest.path
    else:
        described = read_manifest(manifest) if manifest else load_manifest(f"{benchmark}/{name}")
    if described.format != benchmark:
        raise ValueError(f"manifest {manifest or described.name} describes a {described.format} dataset, not {dataset}")
    if root is None:
        raise ValueError(f"data root (--data.root) is required for {dataset}")
    if splits_dir is not None and benchmark != FGVC:
        raise ValueError(f"splits_dir (--splits) applies to FGVC datasets, not {dataset}")
    return Task(
        benchmark,
        described.name,
        described,
        Path(root),
        Path(splits_dir) if splits_dir is not None else None,
        Path(manifest) if manifest is not None else None,
    )


def task_manifest(dataset: str | Path, manifest: str | Path | None = None) -> Manifest:
    """The manifest of the task a run names, without its data: a folder's own (written on first use), the given
    file, or the bundled one (what the class count is read from)."""
    if is_folder_ref(dataset):
        return open_folder(Path(dataset).expanduser())
    benchmark, name = parse_target(str(dataset), strict=False)
    kind = synthetic_kind(name)
    if manifest and not Path(manifest).is_file() and kind is not None:  # a synthetic task not written yet (a plan)
        return synthetic_manifest(kind, layout=benchmark)
    return read_manifest(manifest) if manifest else load_manifest(str(dataset))
