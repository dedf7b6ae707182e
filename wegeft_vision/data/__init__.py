"""Benchmark data: tasks (one object per dataset on disk, whatever its layout), the VTAB-1k/FGVC registry, the on-disk
formats, split manifests, checks, preprocessing presets, the decoded cache, synthetic data.

`BenchmarkDataModule` (Lightning) is imported on first use, so importing this package does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..files import sha256_of
from .cache import CachedDataset, CachedSplit, DecodedCache, cache_key
from .check import PROBLEM_KINDS, CheckReport, Problem, SplitReport, check, check_fgvc, check_task, check_vtab1k
from .fetch import fetch_fgvc_splits
from .fgvc import FGVCSplits, load_fgvc_splits
from .images import ImageListDataset, read_image, verify_image
from .lookup import find_task, locate_task, task_refs
from .manifests import Manifest, SplitEntry, load_manifest, read_manifest, write_manifest
from .registry import (
    FGVC,
    FGVC_DATASETS,
    FGVC_SPLITS,
    VTAB1K,
    VTAB_SPLITS,
    VTAB_TASKS,
    FGVCDataset,
    VTABTask,
    fgvc_dataset,
    parse_target,
    protocol_splits,
    vtab_task,
)
from .synthetic import Scene, render_scene, write_synthetic
from .tasks import Task, open_task, task_manifest
from .transforms import PRESETS, Preprocessing, preprocessing, tf_bilinear_resize
from .vtab1k import load_vtab1k_split, read_split_file, task_dir, write_split_file

if TYPE_CHECKING:
    from .datamodule import BenchmarkDataModule


def __getattr__(name: str) -> Any:
    if name == "BenchmarkDataModule":
        from .datamodule import BenchmarkDataModule

        return BenchmarkDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FGVC",
    "FGVC_DATASETS",
    "FGVC_SPLITS",
    "PRESETS",
    "PROBLEM_KINDS",
    "VTAB1K",
    "VTAB_SPLITS",
    "VTAB_TASKS",
    "BenchmarkDataModule",
    "CachedDataset",
    "CachedSplit",
    "CheckReport",
    "DecodedCache",
    "FGVCDataset",
    "FGVCSplits",
    "ImageListDataset",
    "Manifest",
    "Preprocessing",
    "Problem",
    "Scene",
    "SplitEntry",
    "SplitReport",
    "Task",
    "VTABTask",
    "cache_key",
    "check",
    "check_fgvc",
    "check_task",
    "check_vtab1k",
    "fetch_fgvc_splits",
    "fgvc_dataset",
    "find_task",
    "load_fgvc_splits",
    "load_manifest",
    "load_vtab1k_split",
    "locate_task",
    "open_task",
    "parse_target",
    "preprocessing",
    "protocol_splits",
    "read_image",
    "read_manifest",
    "read_split_file",
    "render_scene",
    "sha256_of",
    "task_dir",
    "task_manifest",
    "task_refs",
    "tf_bilinear_resize",
    "verify_image",
    "vtab_task",
    "write_manifest",
    "write_split_file",
    "write_synthetic",
]
