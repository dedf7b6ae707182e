"""`viz.pipeline` as a library: the images of a task, and a saved adapter's heatmaps, mosaics and scores written for
them, without the command line."""

from __future__ import annotations

import csv

import pytest
from conftest import TINY_VIT, make_tiny_vit, randomize_trainable
from safetensors.torch import save_file

from wegeft_vision.data import write_synthetic
from wegeft_vision.data.tasks import open_task
from wegeft_vision.methods import WeGeFTConfig, inject, save_adapter
from wegeft_vision.viz.pipeline import HeatmapOptions, list_items, mask_path, write_heatmaps

RANK = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A WeGeFT adapter with non-zero φ, ψ on a tiny ViT (its weights in a file), and a synthetic VTAB-1k task."""
    root = tmp_path_factory.mktemp("pipeline")
    model = make_tiny_vit(num_classes=4)
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    model = inject(model, WeGeFTConfig(rank=RANK))
    randomize_trainable(model)
    adapter = save_adapter(model, root / "adapter.safetensors", backbone_overrides=TINY_VIT)
    write_synthetic(root / "vtab", "shape", {"train800": 0, "val200": 0, "test": 5}, size=32)
    return adapter, weights, root / "vtab"


def test_list_items_of_a_registry_layout_and_a_class(saved):
    _, _, data = saved
    items = list_items(task=open_task("vtab-1k/synthetic_shape", data), split="test")
    assert [item.name for item in items] == [f"{i:05d}_{i:05d}" for i in range(5)]
    assert all(mask_path(item.path).is_file() for item in items)
    label = items[0].label
    only = list_items(task=open_task("vtab-1k/synthetic_shape", data), split="test", class_index=label)
    assert only == [item for item in items if item.label == label]


def test_write_heatmaps_reports_what_it_wrote(saved, tmp_path):
    adapter, weights, data = saved
    items = list_items(task=open_task("vtab-1k/synthetic_shape", data), split="test")
    options = HeatmapOptions(limit=4, batch_size=3, grids=2, mosaic_images=3, score=True)
    summary = write_heatmaps(adapter, items, tmp_path, options, weights=weights, layout="vtab-1k")
    assert (summary.images, summary.grids, summary.paca_figures) == (4, 2, 0)
    assert len(list((tmp_path / "images").iterdir())) == 2
    assert summary.mosaics == 3 * RANK == len(list((tmp_path / "mosaics").iterdir()))  # 3 blocks x r clusters
    with (tmp_path / "scores.csv").open(newline="") as handle:
        scores = list(csv.DictReader(handle))
    (best,) = summary.best
    assert best.part == "target" and best.count == 4 and best.score == max(float(row["score"]) for row in scores)


def test_missing_masks_are_reported_before_the_model_loads(saved, tmp_path):
    _, _, data = saved
    items = list_items(task=open_task("vtab-1k/synthetic_shape", data), split="test")
    mask_path(items[1].path).rename(tmp_path / "moved.png")
    try:
        with pytest.raises(FileNotFoundError, match="--score needs a per-pixel mask per image: missing .*00001.png"):
            write_heatmaps(tmp_path / "no_adapter.safetensors", items, tmp_path, HeatmapOptions(score=True))
        # the first image alone has its mask: with limit=1 the check passes and the (missing) adapter is read
        with pytest.raises(FileNotFoundError, match="no_adapter"):
            write_heatmaps(tmp_path / "no_adapter.safetensors", items, tmp_path, HeatmapOptions(limit=1, score=True))
    finally:
        (tmp_path / "moved.png").rename(mask_path(items[1].path))


def test_a_swin_adapter_draws_and_scores_maps_of_every_stage(saved, tmp_path):
    """Swin stages have grids of their own (8x8, then 4x4 on 32 px): grids, mosaics and scores take them all."""
    from wegeft_vision.backbones import create_backbone
    from wegeft_vision.backbones.families import family

    _, _, data = saved
    swin = family("swin")
    model = create_backbone(swin.architecture, num_classes=4, **swin.tiny)
    weights = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    model = inject(model, WeGeFTConfig(rank=RANK))
    randomize_trainable(model)
    adapter = save_adapter(model, tmp_path / "swin_adapter.safetensors", backbone_overrides=dict(swin.tiny))
    items = list_items(task=open_task("vtab-1k/synthetic_shape", data), split="test")
    options = HeatmapOptions(limit=3, grids=1, mosaic_images=2, score=True)
    summary = write_heatmaps(adapter, items, tmp_path / "out", options, weights=weights, layout="vtab-1k")
    assert (summary.images, summary.grids) == (3, 1)
    assert summary.mosaics == 4 * RANK  # 2 stages x 2 blocks, r clusters each
    with (tmp_path / "out" / "scores.csv").open(newline="") as handle:
        layers = {int(row["layer"]) for row in csv.DictReader(handle)}
    assert layers == {0, 1, 2, 3}
