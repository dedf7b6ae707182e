"""Folders of one's own through the protocol and the report: both layouts, no --data-root, their own table."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic

COUNTS = {"train800": 24, "val200": 12, "test": 16}


def imagefolder_from(vtab: Path, out: Path) -> Path:
    """The same images in torchvision's ImageFolder layout (train800 -> train, val200 -> val, test -> test)."""
    for split, target in (("train800", "train"), ("val200", "val"), ("test", "test")):
        for line in (vtab / f"{split}.txt").read_text().splitlines():
            rel, label = line.rsplit(" ", 1)
            destination = out / target / f"class_{label}" / Path(rel).name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(vtab / rel, destination)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mine")
    vtab = write_synthetic(root, "shape", COUNTS, size=32, name="shapes")
    (vtab / "manifest.yaml").unlink()  # a user's folder comes without one
    return vtab, imagefolder_from(vtab, root / "sorted" / "shapes_sorted")


def test_protocol_and_report_on_both_layouts(folders, tmp_path, capsys):
    vtab, imagefolder = folders
    out = tmp_path / "run"
    args = ["protocol", "--config", "smoke", "--methods", "linear", "--no-progress", "--out", str(out)]
    assert main([*args, "--tasks", str(vtab), str(imagefolder)]) == 0
    for folder, layout in ((vtab, "vtab-1k"), (imagefolder, "imagefolder")):
        manifest = yaml.safe_load((folder / "manifest.yaml").read_text())  # written on first use
        assert manifest["benchmark"] == "custom" and manifest["layout"] == layout
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["benchmark"], r["task"]) for r in rows} == {("custom", "shapes"), ("custom", "shapes_sorted")}
    finals = {r["task"]: r for r in rows if r["stage"] == "final"}
    assert finals["shapes"]["train_splits"] == "train800val200" and finals["shapes"]["eval_size"] == "16"
    assert finals["shapes_sorted"]["train_splits"] == "train+val" and finals["shapes_sorted"]["eval_size"] == "16"
    assert not (out / "data").exists()  # no synthetic data written for tasks that are folders
    capsys.readouterr()
    assert main(["report", str(out / "results.csv")]) == 0
    printed = capsys.readouterr().out
    assert "## Your tasks: test top-1 (final)" in printed and "| shapes | shapes_sorted | Mean |" in printed
    assert (out / "report" / "custom_final_accuracy_vs_params.png").is_file()


def test_folders_of_the_same_name_are_refused(folders, tmp_path, capsys):
    vtab, _ = folders
    twin = shutil.copytree(vtab, tmp_path / "elsewhere" / "shapes")
    args = ["protocol", "--config", "smoke", "--methods", "linear", "--out", str(tmp_path / "run")]
    assert main([*args, "--tasks", str(vtab), str(twin)]) == 2
    assert "share the name 'shapes'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "protocol.json").exists()


def test_a_folder_without_a_layout_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    args = ["protocol", "--config", "smoke", "--out", str(tmp_path / "run"), "--tasks", str(tmp_path / "photos")]
    assert main(args) == 2
    assert "photos holds neither the VTAB-1k layout" in capsys.readouterr().err
