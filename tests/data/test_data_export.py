"""The VTAB-1k exporter's writer and label functions, on an in-memory source (tensorflow-datasets is not needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from wegeft_vision.data import check_vtab1k, read_image, read_split_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "export_vtab1k.py"


@pytest.fixture(scope="module")
def exporter():
    spec = importlib.util.spec_from_file_location("export_vtab1k", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source(count: int, offset: int, grey: bool = False):
    rng = np.random.default_rng(offset)
    for i in range(count):
        shape = (12, 10, 1) if grey else (12, 10, 3)
        yield rng.integers(0, 256, shape, dtype=np.uint8), (offset + i) % 18


def test_writer_is_lossless_and_checkable(exporter, tmp_path):
    folder = exporter.write_task(
        tmp_path,
        "smallnorb_azi",
        {"train800": source(5, 0, True), "val200": source(2, 50, True), "test": source(3, 90)},
    )
    train = read_split_file(folder / "train800val200.txt")
    assert len(train) == 7 and train[5] == ("images/val200/000000.png", 50 % 18)
    first = next(source(1, 0, grey=True))[0]
    assert np.array_equal(read_image(folder / train[0][0]).permute(1, 2, 0).numpy(), np.repeat(first, 3, axis=-1))
    report = check_vtab1k(tmp_path, "smallnorb_azi", allow_count_mismatch=True)
    assert report.ok, report.format()


def test_writer_needs_the_three_splits(exporter, tmp_path):
    with pytest.raises(ValueError, match="splits of dtd lack test"):
        exporter.write_task(tmp_path, "dtd", {"train800": [], "val200": []})


def test_label_functions(exporter):
    labels = exporter.LABELS
    assert labels["clevr_count"]({"objects": {"size": [0] * 5}}) == 2
    assert labels["clevr_dist"]({"objects": {"pixel_coords": [[0, 0, 9.2], [0, 0, 12.0]]}}) == 3
    no_vehicle = {"objects": {"type": [4], "location": [[0.0, 0.0, 5.0]]}}
    near_car = {"objects": {"type": [0, 4], "location": [[0.0, 0.0, 6.0], [0.0, 0.0, 2.0]]}}
    assert labels["kitti_dist"](no_vehicle) == 3 and labels["kitti_dist"](near_car) == 0
    assert labels["dsprites_loc"]({"label_x_position": 31}) == 15
    assert labels["dsprites_ori"]({"label_orientation": 39}) == 15
    assert labels["dsprites_ori"]({"label_orientation": 3}) == 1
