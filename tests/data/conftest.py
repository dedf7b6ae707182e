"""Fixtures that write tiny datasets to disk in both formats (VTAB-1k folders, FGVC JSON splits) and their manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wegeft_vision.data import Manifest, SplitEntry, write_manifest, write_split_file

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
FGVC_REFERENCE = REFERENCE / "fgvc_splits"
TINY_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
VTAB_COUNTS = {"train800": 6, "val200": 3, "test": 4}


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 24), mode: str = "RGB") -> Path:
    """A small random image (PNG or JPEG by suffix), deterministic for a seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def make_vtab_task(root: Path, task: str = "cifar", counts: dict | None = None, num_classes: int = 5) -> Path:
    """`<root>/<task>/` with images under `images/` and the four split files (train800val200 = train + val)."""
    counts = counts or VTAB_COUNTS
    folder = root / task
    splits, index = {}, 0
    for split in ("train800", "val200", "test"):
        splits[split] = []
        for _ in range(counts[split]):
            rel = f"images/{split}/{index:04d}.png"
            write_image(folder / rel, seed=index)
            splits[split].append((rel, index % num_classes))
            index += 1
    splits["train800val200"] = splits["train800"] + splits["val200"]
    for split, samples in splits.items():
        write_split_file(folder / f"{split}.txt", samples)
    return folder


def vtab_manifest(path: Path, task: str = "cifar", counts: dict | None = None, num_classes: int = 100) -> Path:
    counts = counts or VTAB_COUNTS
    sizes = {**counts, "train800val200": counts["train800"] + counts["val200"]}
    splits = {s: SplitEntry(s, f"{s}.txt", n) for s, n in sizes.items()}
    return write_manifest(Manifest("vtab-1k", task, num_classes, splits), path)


# FGVC: 3 classes with string ids like CUB; val lacks class "003" (as NABirds val lacks 2 of its 555 classes)
FGVC_LABELS = {
    "train": ["001", "002", "003", "001", "002", "003"],
    "val": ["002", "001"],
    "test": ["003", "001", "002"],
}


def make_fgvc_dataset(root: Path, image_folder: str = "images") -> Path:
    """A CUB-like dataset: `<root>/<image_folder>/<class>/<n>.jpg` and `<root>/{train,val,test}.json`."""
    index = 0
    for split, labels in FGVC_LABELS.items():
        entries = {}
        for label in labels:
            rel = f"{label}.Bird/{index:04d}.jpg"
            write_image(root / image_folder / rel, seed=100 + index)
            entries[rel] = label
            index += 1
        (root / f"{split}.json").write_text(json.dumps(entries))
    return root


def fgvc_manifest(path: Path, name: str = "cub", image_folder: str = "images", sha256: dict | None = None) -> Path:
    splits = {
        s: SplitEntry(s, f"{s}.json", len(labels), len(set(labels)), sha256=(sha256 or {}).get(s))
        for s, labels in FGVC_LABELS.items()
    }
    return write_manifest(Manifest("fgvc", name, 3, splits, image_folder=image_folder), path)


@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    """A VTAB-1k root holding a tiny `cifar` task (counts differ from the canonical ones)."""
    make_vtab_task(tmp_path / "vtab", "cifar")
    return tmp_path / "vtab"


@pytest.fixture
def vtab_tiny_manifest(tmp_path: Path) -> Path:
    return vtab_manifest(tmp_path / "manifests" / "vtab1k_cifar.yaml")


@pytest.fixture
def fgvc_root(tmp_path: Path) -> Path:
    return make_fgvc_dataset(tmp_path / "cub")


@pytest.fixture
def fgvc_tiny_manifest(tmp_path: Path) -> Path:
    return fgvc_manifest(tmp_path / "manifests" / "fgvc_cub.yaml")
