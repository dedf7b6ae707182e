"""The checks behind `wegeft-vision data check`: layout, counts, checksums, decodable images, labels, per split."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import fgvc, vtab1k
from .folders import imagefolder_split, is_folder_ref, listing_sha256, open_folder
from .images import verify_image
from .manifests import Manifest, load_manifest, read_manifest, sha256_of
from .registry import FGVC, FGVC_SPLITS, IMAGEFOLDER, IMAGEFOLDER_SPLITS, VTAB1K, VTAB_SPLITS, parse_target

MISSING_FOLDER = "missing folder"
MISSING_FILE = "missing file"
UNREADABLE_FILE = "unreadable file"
COUNT_MISMATCH = "count mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
UNKNOWN_LABEL = "unknown label"
PROBLEM_KINDS = (MISSING_FOLDER, MISSING_FILE, UNREADABLE_FILE, COUNT_MISMATCH, CHECKSUM_MISMATCH, UNKNOWN_LABEL)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with a message that names the file or value at fault and what was expected."""

    kind: str
    message: str


@dataclass
class SplitReport:
    """What was found for one split: entries, expected entries, classes, images verified, problems and notes."""

    split: str
    file: Path
    count: int | None = None
    expected: int | None = None
    num_classes: int | None = None
    images_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckReport:
    """The result of checking one dataset or task: dataset-level problems and one `SplitReport` per split."""

    target: str
    root: Path
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.all_problems

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + [p for s in self.splits for p in s.problems]

    def format(self, max_per_split: int = 20) -> str:
        """A per-split text report; at most `max_per_split` problems are listed per split (0: all)."""
        lines = [f"{self.target} at {self.root}"]
        lines += [f"  [{p.kind}] {p.message}" for p in self.problems]
        for s in self.splits:
            count = "?" if s.count is None else f"{s.count:,}"
            expected = "" if s.expected is None else f" / {s.expected:,} expected"
            classes = "" if s.num_classes is None else f", {s.num_classes} classes"
            status = "ok" if s.ok else f"{len(s.problems)} problem(s)"
            lines.append(f"  {s.split:<15} {count} entries{expected}{classes}, {s.images_checked:,} images: {status}")
            lines += [f"      note: {n}" for n in s.notes]
            shown = s.problems if max_per_split <= 0 else s.problems[:max_per_split]
            lines += [f"      [{p.kind}] {p.message}" for p in shown]
            if len(shown) < len(s.problems):
                lines.append(f"      ... and {len(s.problems) - len(shown)} more (--max-problems 0 lists all)")
        total = len(self.all_problems)
        lines.append("OK" if total == 0 else f"FAILED: {total} problem(s)")
        return "\n".join(lines)


def _manifest_for(benchmark: str, name: str, manifest: Manifest | str | Path | None) -> Manifest:
    if isinstance(manifest, Manifest):
        found = manifest
    elif manifest is not None:
        found = read_manifest(manifest)
    else:
        try:
            benchmark, name = parse_target(f"{benchmark}/{name}")
        except ValueError as err:
            raise ValueError(f"{err}; for a custom dataset pass its manifest file (--manifest)") from None
        found = load_manifest(f"{benchmark}/{name}")
    if found.format != benchmark:
        raise ValueError(f"manifest {found.path or found.name} describes a {found.format} dataset, not {benchmark}")
    return found


def _check_count(report: SplitReport, found: int, expected: int, what: str, allow_mismatch: bool) -> None:
    if found == expected:
        return
    message = f"{report.file}: {found:,} {what}, expected {expected:,}"
    if allow_mismatch:
        report.notes.append(message + " (accepted by --allow-count-mismatch)")
    else:
        report.problems.append(Problem(COUNT_MISMATCH, message + " (pass --allow-count-mismatch to accept)"))


def _check_checksum(report: SplitReport, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_of(report.file)
    if actual != expected.lower():
        report.problems.append(Problem(CHECKSUM_MISMATCH, f"{report.file}: sha256 {actual}, expected {expected}"))


def _verify_images(uses: dict[Path, list[SplitReport]], workers: int) -> None:
    """Decode every distinct image once and file a problem under each split that lists a bad one."""
    paths = list(uses)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(verify_image, paths, chunksize=64))
    for path, reason in zip(paths, results, strict=True):
        for report in uses[path]:
            report.images_checked += 1
            if reason == "missing":
                report.problems.append(Problem(MISSING_FILE, f"{report.file.name}: missing image {path}"))
            elif reason is not None:
                report.problems.append(Problem(UNREADABLE_FILE, f"{report.file.name}: image {path} is {reason}"))


def _collect(uses: dict[Path, list[SplitReport]], report: SplitReport, paths: Iterable[Path]) -> None:
    for path in paths:
        uses[path].append(report)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def check_vtab1k(
    root: str | Path,
    task: str,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check a VTAB-1k task folder against its manifest.

    Args:
        root: the folder holding one sub-folder per task.
        task: canonical name or alias; a custom task needs `manifest`.
        manifest: a `Manifest` or manifest file; default: the bundled one of `task`.
        allow_count_mismatch: report differing counts as notes instead of problems.
        verify_images: decode every image listed (otherwise only existence of split files is checked).
        workers: decoding threads.
    """
    manifest = _manifest_for(VTAB1K, task, manifest)
    report = CheckReport(target=f"{manifest.benchmark}/{manifest.name}", root=Path(root))
    try:
        folder = vtab1k.task_dir(root, manifest.name)
    except FileNotFoundError as err:
        report.problems.append(Problem(MISSING_FOLDER, str(err)))
        return report
    report.root = folder
    uses: dict[Path, list[SplitReport]] = defaultdict(list)
    for entry in sorted(manifest.splits.values(), key=lambda e: VTAB_SPLITS.index(e.name)):
        split = SplitReport(entry.name, folder / entry.file, expected=entry.count)
        report.splits.append(split)
        if not split.file.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {split.file}"))
            continue
        _check_checksum(split, entry.sha256)
        try:
            samples = vtab1k.read_split_file(split.file)
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        split.count, split.num_classes = len(samples), len({label for _, label in samples})
        _check_count(split, split.count, entry.count, "entries", allow_count_mismatch)
        for rel, label in samples:
            if label >= manifest.num_classes:
                split.problems.append(
                    Problem(
                        UNKNOWN_LABEL,
                        f"{split.file.name}: label {label} of {rel} is outside 0..{manifest.num_classes - 1}",
                    )
                )
        if verify_images:
            _collect(uses, split, (folder / rel for rel, _ in samples))
    _verify_images(uses, workers or default_workers())
    return report


def check_fgvc(
    root: str | Path,
    dataset: str,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check an FGVC dataset folder and its split files against the manifest.

    Args:
        root: the dataset's root folder (its image folder, e.g. `images/`, lies inside).
        dataset: canonical name or alias; a custom dataset needs `manifest`.
        splits_dir: folder of the JSON split files (`<dataset>/<split>.json` or `<split>.json`); default: `root`.
        manifest: a `Manifest` or manifest file; default: the bundled one of `dataset`.
        allow_count_mismatch: report differing counts as notes instead of problems.
        verify_images: decode every image listed.
        workers: decoding threads.
    """
    manifest = _manifest_for(FGVC, dataset, manifest)
    root = Path(root)
    report = CheckReport(target=f"{FGVC}/{manifest.name}", root=root)
    images = fgvc.image_dir(root, manifest.name, manifest.image_folder)
    if not images.is_dir():
        what = "dataset folder" if images == root else f"image folder {manifest.image_folder!r} of {manifest.name}"
        report.problems.append(Problem(MISSING_FOLDER, f"missing {what}: {images}"))
        return report
    splits_dir = Path(splits_dir) if splits_dir is not None else root
    uses: dict[Path, list[SplitReport]] = defaultdict(list)
    known: set | None = None
    train_name = None
    for entry in sorted(manifest.splits.values(), key=lambda e: FGVC_SPLITS.index(e.name)):
        path = fgvc.split_file(splits_dir, manifest.name, entry.name)
        split = SplitReport(entry.name, path, expected=entry.count)
        report.splits.append(split)
        if not path.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {path}"))
            continue
        _check_checksum(split, entry.sha256)
        try:
            labels = fgvc.read_split_file(path)
            if entry.name == "train":
                known, train_name = set(fgvc.class_ids_of(labels, str(path))), path.name
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        split.count, split.num_classes = len(labels), len(set(labels.values()))
        _check_count(split, split.count, entry.count, "entries", allow_count_mismatch)
        if entry.name == "train":
            _check_count(split, split.num_classes, manifest.num_classes, "classes", allow_count_mismatch)
        elif entry.num_classes is not None:
            _check_count(split, split.num_classes, entry.num_classes, "classes", allow_count_mismatch)
        if known is not None and entry.name != "train":
            unknown: dict = defaultdict(list)
            for rel, label in labels.items():
                if label not in known:
                    unknown[label].append(rel)
            for label, rels in unknown.items():
                message = (
                    f"{path.name}: label {label!r} ({len(rels)} image(s), e.g. {rels[0]}) is absent from {train_name}"
                )
                split.problems.append(Problem(UNKNOWN_LABEL, message))
        if verify_images:
            _collect(uses, split, (images / rel for rel in labels))
    _verify_images(uses, workers or default_workers())
    return report


def check_imagefolder(
    folder: str | Path,
    manifest: Manifest,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check a folder in the ImageFolder layout against its manifest: class folders, counts, listings, images."""
    folder = Path(folder)
    report = CheckReport(target=f"{manifest.benchmark}/{manifest.name}", root=folder)
    uses: dict[Path, list[SplitReport]] = defaultdict(list)
    for split in IMAGEFOLDER_SPLITS:
        entry = manifest.splits[split]
        split_report = SplitReport(split, folder / entry.file, expected=entry.count)
        report.splits.append(split_report)
        try:
            samples = imagefolder_split(folder, entry.file, manifest.classes)
        except FileNotFoundError as err:
            split_report.problems.append(Problem(MISSING_FOLDER, str(err)))
            continue
        except ValueError as err:
            split_report.problems.append(Problem(UNKNOWN_LABEL, str(err)))
            continue
        split_report.count, split_report.num_classes = len(samples), len({label for _, label in samples})
        _check_count(split_report, split_report.count, entry.count, "images", allow_count_mismatch)
        if entry.sha256 and listing_sha256(samples) != entry.sha256 and split_report.count == entry.count:
            split_report.problems.append(
                Problem(CHECKSUM_MISMATCH, f"{split_report.file}: images were renamed or moved since {manifest.path}")
            )
        if verify_images:
            _collect(uses, split_report, (folder / rel for rel, _ in samples))
    _verify_images(uses, workers or default_workers())
    return report


def check_folder(
    folder: str | Path, allow_count_mismatch: bool = False, verify_images: bool = True, workers: int | None = None
) -> CheckReport:
    """Check a task folder of one's own (VTAB-1k or ImageFolder layout) against `<folder>/manifest.yaml`, which is
    written on first use (see `data.folders`)."""
    folder = Path(folder).expanduser()
    manifest = open_folder(folder)
    options = dict(allow_count_mismatch=allow_count_mismatch, verify_images=verify_images, workers=workers)
    if manifest.format == IMAGEFOLDER:
        return check_imagefolder(folder, manifest, **options)
    return check_vtab1k(folder.parent, folder.name, manifest=manifest, **options)


def check(
    ref: str,
    root: str | Path | None = None,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """`check_vtab1k` or `check_fgvc` for a `benchmark/name` reference (`splits_dir` applies to FGVC only), or
    `check_folder` for a folder path.

    Raises:
        ValueError: `splits_dir` given for a VTAB-1k task, an unknown reference without a manifest, or no `root` for
            a reference that is not a folder.
    """
    if is_folder_ref(ref):
        if manifest is not None or splits_dir is not None:
            raise ValueError(f"{ref} is a task folder: it holds its own manifest and splits (drop --manifest/--splits)")
        return check_folder(ref, allow_count_mismatch, verify_images, workers)
    if root is None:
        raise ValueError(f"--root is required for {ref} (the folder that holds the data)")
    benchmark, name = parse_target(ref, strict=False)
    options = dict(manifest=manifest, allow_count_mismatch=allow_count_mismatch, verify_images=verify_images)
    if benchmark == VTAB1K:
        if splits_dir is not None:
            raise ValueError(f"splits_dir (--splits) applies to FGVC datasets, not {ref}")
        return check_vtab1k(root, name, workers=workers, **options)
    return check_fgvc(root, name, splits_dir=splits_dir, workers=workers, **options)
