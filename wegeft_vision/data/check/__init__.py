"""The checks behind `wegeft-vision data check`: layout, counts, checksums, split files, images, labels, per split.

Errors fail the check: what is missing or unreadable, wrong counts or checksums, unknown labels, a path listed twice in
a split file, a sample in two splits that must be disjoint, a path outside the dataset's folder, an image refused by
the decoder (too many pixels, no known 8-bit range). Warnings are reported and let it pass: what loading changes about
an image (16 bits, transparency, CMYK, EXIF orientation; see `data.images`), a byte-order mark, identical image files
under different paths in splits that must be disjoint, and (once per task) a registered VTAB-1k task whose images are
JPEG: the widely shared VTAB-1k folders are lossy re-encodings, a known source of lower accuracy, while
`scripts/export_vtab1k.py` writes lossless PNG from tensorflow-datasets at the authors' versions.
"""

from __future__ import annotations

from pathlib import Path

from ..folders import is_folder_ref
from ..manifests import Manifest
from ..registry import FGVC, VTAB1K
from ..tasks import open_task
from .layouts import check_task, default_workers
from .report import ERROR, PROBLEM_KINDS, WARNING, CheckReport, Problem, SplitReport

__all__ = [
    "ERROR",
    "PROBLEM_KINDS",
    "WARNING",
    "CheckReport",
    "Problem",
    "SplitReport",
    "check",
    "check_fgvc",
    "check_task",
    "check_vtab1k",
    "default_workers",
]


def check(
    ref: str,
    root: str | Path | None = None,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check the task `ref` names (`wegeft-vision data check`): `benchmark/name` with its data `root` (`splits_dir`:
    FGVC only; `manifest`: for a task outside the registry), or a folder of one's own (its manifest written on first
    use). See `check_task`.

    Raises:
        ValueError: `splits_dir` given for a VTAB-1k task, an unknown reference without a manifest, no `root` for a
            reference that is not a folder, or a manifest or splits given for a folder.
    """
    if is_folder_ref(ref):
        if manifest is not None or splits_dir is not None:
            raise ValueError(f"{ref} is a task folder: it holds its own manifest and splits (drop --manifest/--splits)")
    elif root is None:
        raise ValueError(f"--root is required for {ref} (the folder that holds the data)")
    return check_task(open_task(ref, root, splits_dir, manifest), allow_count_mismatch, verify_images, workers)


def check_vtab1k(
    root: str | Path,
    task: str,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """`check` of the VTAB-1k task `task` (name or alias; one outside the registry needs `manifest`) under `root`, the
    folder holding one folder per task."""
    return check(f"{VTAB1K}/{task}", root, None, manifest, allow_count_mismatch, verify_images, workers)


def check_fgvc(
    root: str | Path,
    dataset: str,
    splits_dir: str | Path | None = None,
    manifest: Manifest | str | Path | None = None,
    allow_count_mismatch: bool = False,
    verify_images: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """`check` of the FGVC dataset `dataset` (name or alias; one outside the registry needs `manifest`) in its folder
    `root`, its JSON split files in `splits_dir` (default: `root`)."""
    return check(f"{FGVC}/{dataset}", root, splits_dir, manifest, allow_count_mismatch, verify_images, workers)
