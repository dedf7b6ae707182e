"""FGVC split files: one label map from train, reused for val and test; the real split files load with their counts."""

from __future__ import annotations

import json

import pytest

from wegeft_vision.data import FGVC_DATASETS, load_fgvc_splits
from wegeft_vision.data.fgvc import image_dir, split_file

from .conftest import FGVC_REFERENCE


def test_label_map_from_train_kept_by_val_missing_classes(fgvc_root):
    loaded = load_fgvc_splits("cub", fgvc_root)
    assert loaded.class_ids == ["001", "002", "003"]
    assert [label for _, label in loaded["train"]] == [0, 1, 2, 0, 1, 2]
    # val has only "002" and "001": a per-split map would make them 1 and 0 -> [1, 0] by luck; check the ids
    assert [label for _, label in loaded["val"]] == [1, 0]
    assert [label for _, label in loaded["test"]] == [2, 0, 1]
    assert loaded.num_classes == 3


def test_val_with_fewer_classes_keeps_train_indices(tmp_path):
    train = {f"a/{i}.jpg": cid for i, cid in enumerate([10, 20, 30, 40])}
    val = {"b/0.jpg": 40, "b/1.jpg": 30}  # a per-split map would give 0 and 1
    for name, data in (("train", train), ("val", val), ("test", val)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    loaded = load_fgvc_splits("custom", tmp_path)
    assert loaded.class_ids == [10, 20, 30, 40]
    assert loaded["val"] == [("b/0.jpg", 3), ("b/1.jpg", 2)]


def test_id_absent_from_train_is_an_error_naming_file_and_id(fgvc_root):
    (fgvc_root / "test.json").write_text(json.dumps({"x/1.jpg": "001", "x/2.jpg": "999"}))
    with pytest.raises(ValueError, match=r"test.json: label '999' \(of x/2.jpg\) does not occur in the training split"):
        load_fgvc_splits("cub", fgvc_root)


def test_invalid_split_files(tmp_path):
    (tmp_path / "train.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="train.json should hold a JSON object"):
        load_fgvc_splits("cub", tmp_path)
    (tmp_path / "train.json").write_text('{"a.jpg": 1, "b.jpg": "1"}')
    with pytest.raises(ValueError, match="mixes integer and string labels"):
        load_fgvc_splits("cub", tmp_path)
    (tmp_path / "train.json").write_text('{"a.jpg": 1.5}')
    with pytest.raises(ValueError, match="label of 'a.jpg' should be an integer or a string"):
        load_fgvc_splits("cub", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing split file .*nowhere/train.json"):
        load_fgvc_splits("cub", tmp_path / "nowhere")


def test_nested_layout_and_image_folder(tmp_path):
    (tmp_path / "cub").mkdir()
    (tmp_path / "cub" / "train.json").write_text("{}")
    assert split_file(tmp_path, "cub_200_2011", "train") == tmp_path / "cub" / "train.json"
    assert split_file(tmp_path, "cub", "val") == tmp_path / "val.json"
    assert image_dir(tmp_path, "stanforddogs") == tmp_path / "Images"
    assert image_dir(tmp_path, "stanfordcars") == tmp_path


@pytest.mark.skipif(not FGVC_REFERENCE.is_dir(), reason="../shared/reference/fgvc_splits is absent")
@pytest.mark.parametrize("dataset", list(FGVC_DATASETS))
def test_reference_split_files_load_with_readme_counts(dataset):
    loaded = load_fgvc_splits(dataset, FGVC_REFERENCE)
    assert {s: len(v) for s, v in loaded.splits.items()} == FGVC_DATASETS[dataset].split_sizes
    assert loaded.num_classes == FGVC_DATASETS[dataset].num_classes
    val_classes = {label for _, label in loaded["val"]}
    assert len(val_classes) == (553 if dataset == "nabirds" else loaded.num_classes)
    assert max(val_classes) < loaded.num_classes
    if dataset == "cub":
        assert isinstance(loaded.class_ids[0], str)
    if dataset == "nabirds":  # the indices of val are those of train, whatever classes val lacks
        raw_train = json.loads((FGVC_REFERENCE / "nabirds" / "train.json").read_text())
        raw_val = json.loads((FGVC_REFERENCE / "nabirds" / "val.json").read_text())
        index = {cid: i for i, cid in enumerate(sorted(set(raw_train.values())))}
        assert loaded["val"] == [(rel, index[cid]) for rel, cid in raw_val.items()]
