"""Benchmark data: the VTAB-1k/FGVC registry, both on-disk formats, split manifests, checks, presets, cache, synthetic.

`BenchmarkDataModule` (Lightning) is imported on first use, so importing this package does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import CachedDataset, CachedSplit, DecodedCache, cache_key
from .check import PROBLEM_KINDS, CheckReport, Problem, SplitReport, check, check_fgvc, check_vtab1k
from .fetch import fetch_fgvc_splits
from .fgvc import FGVCSplits, load_fgvc_splits
from .images import ImageListDataset, read_image, verify_image
from .manifests import Manifest, SplitEntry, load_manifest, read_manifest, sha256_of, write_manifest
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
from .transforms import PRESETS, Preprocessing, backbone_data_config, preprocessing, tf_bilinear_resize
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
    "VTABTask",
    "backbone_data_config",
    "cache_key",
    "check",
    "check_fgvc",
    "check_vtab1k",
    "fetch_fgvc_splits",
    "fgvc_dataset",
    "load_fgvc_splits",
    "load_manifest",
    "load_vtab1k_split",
    "parse_target",
    "preprocessing",
    "protocol_splits",
    "read_image",
    "read_manifest",
    "read_split_file",
    "render_scene",
    "sha256_of",
    "task_dir",
    "tf_bilinear_resize",
    "verify_image",
    "vtab_task",
    "write_manifest",
    "write_split_file",
    "write_synthetic",
]
