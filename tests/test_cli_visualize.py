"""`wegeft-vision visualize`: figures and score CSVs for a tiny saved adapter on synthetic data, and its user errors."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic
from wegeft_vision.methods import WeGeFTConfig, inject, save_adapter

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
RANK = 3
COUNTS = {"train800": 0, "val200": 0, "test": 6}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved WeGeFT adapter (random non-zero φ, ψ), its backbone weights file and a synthetic VTAB-1k task."""
    root = tmp_path_factory.mktemp("visualize")
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=4, **TINY)
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    model = inject(model, WeGeFTConfig(rank=RANK))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("phi" in name or "psi" in name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    adapter = save_adapter(model, root / "adapter.safetensors", backbone_overrides=TINY)
    folder = write_synthetic(root / "vtab", "shape", COUNTS, size=32)
    return {"root": root, "weights": weights, "adapter": adapter, "data": root / "vtab", "task": folder}


def _run(setup, out, *extra):
    return main(
        ["visualize", "--adapter", str(setup["adapter"]), "--weights", str(setup["weights"]), "--out", str(out), *extra]
    )


def test_writes_grids_mosaics_and_scores(setup, tmp_path, capsys):
    data = ["--data-root", str(setup["data"]), "--benchmark", "vtab-1k", "--task", "synthetic_shape", "--split", "test"]
    assert _run(setup, tmp_path, *data, "--limit", "4", "--batch-size", "3", "--score") == 0
    grids = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert grids == [f"{i:05d}_{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "mosaics").iterdir()) == sorted(
        f"block{b}_cluster{k}.png" for b in range(2) for k in range(RANK)
    )
    mosaic = Image.open(tmp_path / "mosaics" / "block0_cluster0.png")
    assert mosaic.size == (4 * 32 + 3 * 2, 32)  # 4 images in one row, 2 px padding
    with (tmp_path / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["metric", "layer", "cluster", "part", "score", "count"]
    assert {(int(r["layer"]), int(r["cluster"])) for r in rows} == {(b, k) for b in range(2) for k in range(RANK)}
    assert all(r["metric"] == "iou" and r["part"] == "target" and r["count"] == "4" for r in rows)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    with (tmp_path / "best_clusters.csv").open() as handle:
        best = list(csv.DictReader(handle))
    assert len(best) == 1 and list(best[0]) == ["metric", "part", "layer", "cluster", "score", "baseline", "count"]
    assert float(best[0]["score"]) == max(float(r["score"]) for r in rows)
    assert "target: best block" in capsys.readouterr().out


def test_images_folder_layers_and_random_weights(setup, tmp_path):
    images = setup["task"] / "images"
    args = ["--images", str(images), "--layers", "1", "--mosaic-images", "2", "--random-weights", "--score"]
    assert main(["visualize", "--adapter", str(setup["adapter"]), "--out", str(tmp_path), *args]) == 0
    assert len(list((tmp_path / "images").iterdir())) == 6
    assert sorted(p.name for p in (tmp_path / "mosaics").iterdir()) == [f"block1_cluster{k}.png" for k in range(RANK)]
    assert Image.open(tmp_path / "mosaics" / "block1_cluster0.png").size == (2 * 32 + 2, 32)
    with (tmp_path / "scores.csv").open() as handle:
        assert {r["layer"] for r in csv.DictReader(handle)} == {"1"}


def test_class_filter(setup, tmp_path):
    labels = [int(line.split()[1]) for line in (setup["task"] / "test.txt").read_text().splitlines()]
    k = labels[0]
    data = ["--data-root", str(setup["data"]), "--benchmark", "vtab-1k", "--task", "synthetic_shape", "--split", "test"]
    assert _run(setup, tmp_path, *data, "--class", str(k), "--mosaic-images", "0") == 0
    assert len(list((tmp_path / "images").iterdir())) == labels.count(k)
    assert not (tmp_path / "mosaics").exists()


def test_errors(setup, tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")

    assert (
        main(
            [
                "visualize",
                "--adapter",
                str(tmp_path / "none.safetensors"),
                "--images",
                str(folder),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "none.safetensors does not exist" in capsys.readouterr().err

    assert _run(setup, tmp_path / "out", "--images", str(folder), "--score") == 2
    err = capsys.readouterr().err
    assert "--score needs a per-pixel mask" in err and "a.png" in err

    assert _run(setup, tmp_path / "out") == 2
    assert "give either --images DIR or --data-root DIR" in capsys.readouterr().err

    assert _run(setup, tmp_path / "out", "--data-root", str(setup["data"]), "--benchmark", "vtab-1k") == 2
    assert "--data-root needs --task, --split" in capsys.readouterr().err


def test_cub_keypoint_scores(setup, tmp_path, capsys):
    """fgvc/cub with --score scores each map's maximum against parts/part_locs.txt instead of masks."""
    root = tmp_path / "CUB_200_2011"
    files = {1: "001.Albatross/a_1.png", 2: "001.Albatross/a_2.png", 3: "002.Auklet/b_1.png"}
    for path in files.values():
        (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (120, 60, 30)).save(root / "images" / path)
    (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in files.items()))
    (root / "parts").mkdir()
    (root / "parts" / "parts.txt").write_text("1 beak\n2 left wing\n")
    (root / "parts" / "part_locs.txt").write_text(
        "".join(f"{i} 1 10.0 12.0 1\n{i} 2 50.0 30.0 {int(i != 2)}\n" for i in files)
    )
    labels = {p: (1 if p.startswith("001") else 2) for p in files.values()}
    for split in ("train", "val", "test"):
        (root / f"{split}.json").write_text(json.dumps(labels))
    data = ["--data-root", str(root), "--benchmark", "fgvc", "--task", "cub", "--split", "test"]
    assert _run(setup, tmp_path / "out", *data, "--score", "--radius", "0.25") == 0
    with (tmp_path / "out" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["metric"] for r in rows} == {"hit_rate"}
    assert {r["part"] for r in rows} == {"beak", "left wing"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    counts = {r["part"]: int(r["count"]) for r in rows}
    assert counts == {"beak": 3, "left wing": 2}  # image 2's wing is not visible
    assert "best block" in capsys.readouterr().out
    assert _run(setup, tmp_path / "bad", *data, "--score", "--radius", "0") == 2
