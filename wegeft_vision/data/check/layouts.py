"""A task's check, per on-disk layout: list files (VTAB-1k), JSON split files (FGVC), class folders (ImageFolder)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .. import fgvc, vtab1k
from ..class_folders import scan_split
from ..folders import listing_sha256
from ..manifests import SplitListing, outside_root, sample_id
from ..registry import FGVC, FGVC_SPLITS, IMAGEFOLDER, IMAGEFOLDER_SPLITS, VTAB1K, VTAB_SPLITS, VTAB_TASKS
from ..tasks import Task
from .image_files import Use, check_jpeg, collect, verify_images
from .listings import DISJOINT, check_checksum, check_count, check_disjoint, check_listing
from .report import (
    CHECKSUM_MISMATCH,
    MISSING_FILE,
    MISSING_FOLDER,
    UNKNOWN_LABEL,
    UNREADABLE_FILE,
    WARNING,
    CheckReport,
    Problem,
    SplitReport,
)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def check_task(
    task: Task, allow_count_mismatch: bool = False, verify_images: bool = True, workers: int | None = None
) -> CheckReport:
    """Check a task's data against its manifest, per split.

    Args:
        task: the task (`data.tasks.open_task`).
        allow_count_mismatch: report differing counts as notes instead of problems.
        verify_images: decode every image listed (otherwise only the listings are checked; JPEG images are then told
            by their suffix alone, not by their first bytes).
        workers: decoding threads (default: min(8, CPUs)).
    """
    report = CheckReport(target=task.ref, root=task.root)
    try:
        report.root = task.folder
    except FileNotFoundError as err:
        report.problems.append(Problem(MISSING_FOLDER, str(err)))
        return report
    check = {VTAB1K: _check_list_files, FGVC: _check_json_splits, IMAGEFOLDER: _check_class_folders}[task.layout]
    check(task, report, allow_count_mismatch, verify_images, workers or default_workers())
    return report


def _check_list_files(task: Task, report: CheckReport, allow_mismatch: bool, images: bool, workers: int) -> None:
    """The VTAB-1k layout; a registered task whose listed images are JPEG gets one warning that points to the
    exporter."""
    manifest, folder = task.manifest, task.folder
    uses: dict[Path, list[Use]] = defaultdict(list)
    listings: dict[str, tuple[SplitReport, SplitListing]] = {}
    for entry in sorted(manifest.splits.values(), key=lambda e: VTAB_SPLITS.index(e.name)):
        split = SplitReport(entry.name, task.split_file(entry.name), expected=entry.count)
        report.splits.append(split)
        if not split.file.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {split.file}"))
            continue
        check_checksum(split, entry.sha256)
        try:
            listing = vtab1k.parse_split_file(split.file)
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        samples = listing.samples
        split.count, split.num_classes = len(samples), len({label for _, label in samples})
        check_count(split, split.count, entry.count, "entries", allow_mismatch)
        for rel, label in samples:
            if label >= manifest.num_classes:
                message = f"{split.file.name}: label {label} of {rel} is outside 0..{manifest.num_classes - 1}"
                split.problems.append(Problem(UNKNOWN_LABEL, message))
        inside = check_listing(split, listing)
        listings[entry.name] = (split, listing)
        if images:
            collect(uses, split, folder, inside)
    check_disjoint(listings, DISJOINT[VTAB1K])
    if task.benchmark == VTAB1K and task.name in VTAB_TASKS:
        listed = {rel for _, listing in listings.values() for _, rel, _ in listing.entries if outside_root(rel) is None}
        check_jpeg(report, task.name, {folder / sample_id(rel) for rel in listed}, images, workers)
    verify_images(uses, workers, DISJOINT[VTAB1K])


def _check_json_splits(task: Task, report: CheckReport, allow_mismatch: bool, images: bool, workers: int) -> None:
    """The FGVC layout: the dataset's image folder and its JSON split files (one label map, built from train)."""
    manifest, root = task.manifest, task.root
    folder = fgvc.image_dir(root, task.name, manifest.image_folder)
    if not folder.is_dir():
        what = "dataset folder" if folder == root else f"image folder {manifest.image_folder!r} of {task.name}"
        report.problems.append(Problem(MISSING_FOLDER, f"missing {what}: {folder}"))
        return
    uses: dict[Path, list[Use]] = defaultdict(list)
    listings: dict[str, tuple[SplitReport, SplitListing]] = {}
    known: set | None = None
    train_name = None
    for entry in sorted(manifest.splits.values(), key=lambda e: FGVC_SPLITS.index(e.name)):
        path = task.split_file(entry.name)
        split = SplitReport(entry.name, path, expected=entry.count)
        report.splits.append(split)
        if not path.is_file():
            split.problems.append(Problem(MISSING_FILE, f"missing split file {path}"))
            continue
        check_checksum(split, entry.sha256)
        try:
            listing = fgvc.parse_split_file(path)
            labels = dict(listing.samples)  # a repeated path keeps its last label, as JSON readers do
            if entry.name == "train":
                known, train_name = set(fgvc.class_ids_of(labels, str(path))), path.name
        except ValueError as err:
            split.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        split.count, split.num_classes = len(listing.entries), len(set(labels.values()))
        check_count(split, split.count, entry.count, "entries", allow_mismatch)
        if entry.name == "train":
            check_count(split, split.num_classes, manifest.num_classes, "classes", allow_mismatch)
        elif entry.num_classes is not None:
            check_count(split, split.num_classes, entry.num_classes, "classes", allow_mismatch)
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
        inside = check_listing(split, listing)
        listings[entry.name] = (split, listing)
        if images:
            collect(uses, split, folder, inside)
    check_disjoint(listings, DISJOINT[FGVC])
    verify_images(uses, workers, DISJOINT[FGVC])


def _check_class_folders(task: Task, report: CheckReport, allow_mismatch: bool, images: bool, workers: int) -> None:
    """The ImageFolder layout: class folders, counts, listings (against the manifest's digests), images."""
    manifest, folder = task.manifest, task.folder
    uses: dict[Path, list[Use]] = defaultdict(list)
    for split in IMAGEFOLDER_SPLITS:
        entry = manifest.splits[split]
        split_report = SplitReport(split, folder / entry.file, expected=entry.count)
        report.splits.append(split_report)
        try:
            scan = scan_split(folder, entry.file, manifest.classes)
        except FileNotFoundError as err:
            split_report.problems.append(Problem(MISSING_FOLDER, str(err)))
            continue
        except PermissionError as err:
            split_report.problems.append(Problem(UNREADABLE_FILE, str(err)))
            continue
        except ValueError as err:
            split_report.problems.append(Problem(UNKNOWN_LABEL, str(err)))
            continue
        split_report.problems += [Problem(scan.kinds[message], message) for message in scan.errors]
        split_report.problems += [Problem(scan.kinds[message], message, WARNING) for message in scan.warnings]
        samples = scan.samples
        split_report.count, split_report.num_classes = len(samples), len({label for _, label in samples})
        check_count(split_report, split_report.count, entry.count, "images", allow_mismatch)
        if entry.sha256 and listing_sha256(samples) != entry.sha256 and split_report.count == entry.count:
            split_report.problems.append(
                Problem(CHECKSUM_MISMATCH, f"{split_report.file}: images were renamed or moved since {manifest.path}")
            )
        if images:  # paths found by walking the folder: inside it, one listing per split
            collect(uses, split_report, folder, ((None, rel) for rel, _ in samples))
    verify_images(uses, workers, DISJOINT[IMAGEFOLDER])
