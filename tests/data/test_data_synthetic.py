"""Synthetic shapes: deterministic pixels, masks that match the objects, labels in range, the VTAB-1k layout on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wegeft_vision.cli import main
from wegeft_vision.data import load_vtab1k_split, read_manifest, render_scene, write_synthetic
from wegeft_vision.data.synthetic import COLOURS, TASKS, read_mask


def test_deterministic_per_seed_and_index():
    a, b = render_scene(7, size=48, seed=1), render_scene(7, size=48, seed=1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.labels == b.labels
    assert not np.array_equal(a.image, render_scene(7, size=48, seed=2).image)
    assert not np.array_equal(a.image, render_scene(8, size=48, seed=1).image)


def test_masks_labels_and_variety():
    scenes = [render_scene(i, size=64) for i in range(120)]
    for scene in scenes:
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        ids = set(np.unique(scene.mask)) - {0}
        assert 1 in ids and ids <= set(range(1, len(scene.objects) + 1))
        target = scene.image[scene.mask == 1].astype(float).mean(axis=0)
        assert np.abs(target - COLOURS[scene.objects[0].colour]).max() < 20  # the target has its colour
        assert all(0 <= scene.labels[task] < n for task, n in TASKS.items())
        assert scene.labels["count"] == len(scene.objects) - 1
    for task, n in TASKS.items():  # every class occurs
        assert {s.labels[task] for s in scenes} == set(range(n)), task


def test_written_layout_goes_through_the_loader(tmp_path):
    folder = write_synthetic(tmp_path, "position", {"train800": 5, "val200": 2, "test": 3}, size=32, seed=4)
    samples, task_folder = load_vtab1k_split(tmp_path, "synthetic_position", "train800val200")
    assert task_folder == folder and len(samples) == 7
    scenes = json.loads((folder / "scenes.json").read_text())
    rel, label = samples[6]
    assert scenes[rel]["labels"]["position"] == label
    assert np.array_equal(read_mask(folder, rel), render_scene(6, 32, seed=4).mask)
    manifest = read_manifest(folder / "manifest.yaml")
    assert manifest.num_classes == 9 and manifest.splits["train800val200"].count == 7


def test_cli_writes_several_tasks(tmp_path, capsys):
    args = ["data", "synthetic", "--out", str(tmp_path), "--task", "shape", "--task", "colour", "--size", "24"]
    assert main([*args, "--train", "2", "--val", "1", "--test", "1"]) == 0
    assert "data check vtab-1k/synthetic_colour" in capsys.readouterr().out
    assert (tmp_path / "synthetic_shape" / "test.txt").read_text().count("\n") == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic task 'size'"):
        write_synthetic(tmp_path, "size")
    with pytest.raises(ValueError, match="counts should map train800, val200, test"):
        write_synthetic(tmp_path, "shape", {"train": 3})


def test_fgvc_layout_serves_the_fgvc_splits(tmp_path):
    from wegeft_vision.data.datamodule import BenchmarkDataModule

    folder = write_synthetic(tmp_path, "colour", {"train800": 12, "val200": 4, "test": 6}, size=32, layout="fgvc")
    manifest = read_manifest(folder / "manifest.yaml")
    assert manifest.benchmark == "fgvc" and {s: e.count for s, e in manifest.splits.items()} == {
        "train": 12,
        "val": 4,
        "test": 6,
    }
    train = json.loads((folder / "train.json").read_text())
    assert len(train) == 12 and all((folder / image).is_file() for image in train)
    data = BenchmarkDataModule(
        "fgvc/synthetic_colour",
        folder,
        "final",
        manifest=folder / "manifest.yaml",
        backbone="vit_base_patch16_224",
        num_workers=0,
        final_includes_val=True,
    )
    data.setup()
    assert data.describe()["train_size"] == 16 and data.describe()["eval_split"] == "test"


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'imagenet'"):
        write_synthetic(tmp_path, "shape", {"train800": 1, "val200": 1, "test": 1}, layout="imagenet")
