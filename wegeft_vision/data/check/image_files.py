"""Checks of the image files a task lists: every distinct image decoded once (its errors and what loading changes
about it), identical files in splits that must be disjoint, and JPEG re-encodings of registered VTAB-1k tasks."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import images
from ..manifests import sample_id
from .listings import Pairs, where
from .report import (
    IDENTICAL_FILES,
    IMAGE_TOO_LARGE,
    JPEG_IMAGES,
    MISSING_FILE,
    UNREADABLE_FILE,
    UNSUPPORTED_IMAGE,
    WARNING,
    CheckReport,
    Problem,
    SplitReport,
)

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
JPEG_MAGIC = b"\xff\xd8\xff"  # start-of-image marker and the first marker after it
EXPORTER = "scripts/export_vtab1k.py"
_IMAGE_ERRORS = {
    images.MISSING: MISSING_FILE,
    images.UNREADABLE: UNREADABLE_FILE,
    images.TOO_LARGE: IMAGE_TOO_LARGE,
    images.UNSUPPORTED: UNSUPPORTED_IMAGE,
}
Use = tuple[SplitReport, int | None]  # a split that lists an image, and the line that does (None: no list file)


def verify_images(uses: dict[Path, list[Use]], workers: int, pairs: Pairs) -> None:
    """Decode every distinct image once; file its error or warnings under each split that lists it, and identical
    files under different paths in splits that must be disjoint."""
    images.pixel_limit()  # a bad $WEGEFT_MAX_IMAGE_PIXELS is a user error, raised once here
    paths = list(uses)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(images.inspect_image, paths))
    holders: dict[str, list[tuple[Path, SplitReport, int | None]]] = defaultdict(list)
    for path, found in zip(paths, results, strict=True):
        for split, line in uses[path]:
            split.images_checked += 1
            at = where(split, line)
            if found.error == images.MISSING:
                split.problems.append(Problem(MISSING_FILE, f"{at}: missing image {path}"))
            elif found.error is not None:
                message = f"{at}: image {path} is {found.error}: {found.reason}"
                split.problems.append(Problem(_IMAGE_ERRORS[found.error], message))
            for kind, detail in found.warnings:
                split.problems.append(Problem(kind, f"{at}: image {path}: {detail}", WARNING))
            if found.digest is not None:
                holders[found.digest].append((path, split, line))
    disjoint = set(pairs)
    for group in holders.values():
        for path, split, line in group:
            twin = next(((p, s, n) for p, s, n in group if p != path and (s.split, split.split) in disjoint), None)
            if twin is not None:
                other, other_split, other_line = twin
                message = (
                    f"{where(split, line)}: image {path} has the same bytes as {other} "
                    f"({where(other_split, other_line)}); {split.split} and {other_split.split} should share no image"
                )
                split.problems.append(Problem(IDENTICAL_FILES, message, WARNING))


def collect(uses: dict[Path, list[Use]], split: SplitReport, folder: Path, entries: Iterable[tuple[int | None, str]]):
    for line, rel in entries:
        uses[folder / sample_id(rel)].append((split, line))


def _is_jpeg(path: Path, sniff: bool) -> bool:
    """Whether `path` is a JPEG: by its suffix, or (`sniff`) by its first bytes; unreadable files are not (the image
    checks report them)."""
    if path.suffix.lower() in JPEG_SUFFIXES:
        return True
    if not sniff:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(JPEG_MAGIC)) == JPEG_MAGIC
    except OSError:
        return False


def check_jpeg(report: CheckReport, name: str, paths: set[Path], sniff: bool, workers: int) -> None:
    """One warning for the task when some of its listed images are JPEG (suffix, or first bytes when `sniff`)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = sum(pool.map(lambda path: _is_jpeg(path, sniff), paths))
    if found:
        message = (
            f"{report.root}: {found:,} of {len(paths):,} listed images are JPEG; the widely shared VTAB-1k folders are "
            f"lossy JPEG re-encodings, a known source of lower accuracy. For lossless PNG from tensorflow-datasets at "
            f"the authors' versions: python {EXPORTER} --task {name} --out NEW_ROOT"
        )
        report.problems.append(Problem(JPEG_IMAGES, message, WARNING))


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)
