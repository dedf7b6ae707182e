"""`wegeft-vision demo --quick` end to end, offline, from the installed wheel; and the demo's tasks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from wegeft_vision.demo.pixels import pixel_logistic_regression
from wegeft_vision.demo.tasks import TEXTURES, write_digits, write_textures
from wegeft_vision.protocol.report import build_tables, read_results
from wegeft_vision.protocol.report_files import plot_points

METHODS = {"wegeft", "lora", "bitfit", "linear", "linear_random"}


@pytest.fixture(scope="module")
def quick(installed) -> tuple[Path, str]:
    """`wegeft-vision demo --quick` as a new user runs it: the wheel installed in a fresh folder, run from another
    folder, offline (`conftest.installed`: nothing of the checkout is on its path)."""
    out = installed.workdir / "demo"
    result = installed.wegeft_vision("demo", "--quick", "--out", out, "--no-progress", timeout=900)
    for noise in ("ExperimentalWarning", "Traceback", "Trial "):  # progress lines, tables, real warnings only
        assert noise not in result.stdout + result.stderr, noise
    return out, result.stdout


def test_quick_demo_writes_its_task_as_a_folder_of_ones_own(quick):
    out, _ = quick
    manifest = yaml.safe_load((out / "data" / "shapes_position" / "manifest.yaml").read_text())
    assert manifest["benchmark"] == "custom" and manifest["group"] == "structured" and manifest["num_classes"] == 9
    assert manifest["splits"]["train800"]["count"] == 800 and manifest["splits"]["val200"]["count"] == 200


def test_quick_demo_searches_and_finals_every_method_on_the_shipped_backbone(quick):
    out, _ = quick
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["stage"]) for r in rows} == {(m, s) for m in METHODS for s in ("search", "final")}
    backbones = {r["method"]: (r["backbone"], r["weights"]) for r in rows}
    assert backbones["wegeft"][0] == "vit_mini_patch8_32.procedural" and backbones["wegeft"][1].startswith("shipped@")
    assert backbones["linear_random"] == ("vit_mini_patch8_32", "random:seed0")
    params = {r["method"]: int(r["params"]) for r in rows}
    assert params["wegeft"] == 2 * 192 * 16 and params["lora"] == 6 * 8 * (192 + 192) and params["linear"] == 0


def test_quick_demo_report_table_and_a_plot_with_every_point(quick):
    out, printed = quick
    assert "## Your tasks: test top-1 (final)" in printed and "| shapes_position | Structured | Mean |" in printed
    for suffix in (".md", ".csv", "_accuracy_vs_params.png"):
        assert (out / "report" / f"custom_final{suffix}").is_file()
    (table,) = build_tables(read_results(out / "results.csv"))
    _, points, skipped = plot_points(table)
    assert set(points) == METHODS and not skipped


def test_quick_demo_heatmaps_and_scores(quick):
    out, printed = quick
    heatmaps = out / "heatmaps"
    assert len(list((heatmaps / "images").glob("*.png"))) == 4  # --grids 4
    assert len(list((heatmaps / "mosaics").glob("block*_cluster*.png"))) == 6 * 16  # 6 blocks x r = 16 clusters
    with (heatmaps / "scores.csv").open(newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == 6 * 16 and {s["metric"] for s in scores} == {"iou"}
    with (heatmaps / "best_clusters.csv").open(newline="") as handle:
        (best,) = list(csv.DictReader(handle))
    assert best["part"] == "target" and 0.0 <= float(best["baseline"]) <= 1.0
    assert f"IoU {float(best['score']):.3f}, against {float(best['baseline']):.3f} for permuted maps" in printed
    assert "demo done in" in printed


def test_digits_are_the_real_scans_split_800_200_797(tmp_path):
    folder = write_digits(tmp_path)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["group"] == "natural" and manifest["num_classes"] == 10
    counts = {split: entry["count"] for split, entry in manifest["splits"].items()}
    assert counts == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 797}
    assert 93.0 < pixel_logistic_regression(folder) < 99.0  # the raw-pixel reference line (96% in the README)


def test_textures_are_balanced_and_named(tmp_path):
    folder = write_textures(tmp_path, test=80)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert manifest["classes"] == list(TEXTURES) and manifest["group"] == "specialized"
    labels = [int(line.rsplit(" ", 1)[1]) for line in (folder / "train800.txt").read_text().splitlines()]
    assert [labels.count(k) for k in range(len(TEXTURES))] == [100] * len(TEXTURES)
