"""The bundled manifests carry the canonical counts, classes, pinned URLs and checksums, and agree with the registry."""

from __future__ import annotations

import pytest
import yaml

from wegeft_vision.data import FGVC_DATASETS, VTAB_TASKS, load_manifest, read_manifest, sha256_of, write_manifest
from wegeft_vision.data.manifests import BUNDLED_MANIFEST_DIR, manifest_path

from .conftest import FGVC_REFERENCE

COMMIT = "f0cb80cb4db413ecd108dd7e74fef27105eb6b97"


def test_one_manifest_per_task_and_dataset():
    names = sorted(p.stem for p in BUNDLED_MANIFEST_DIR.glob("*.yaml"))
    expected = sorted([f"vtab1k_{t}" for t in VTAB_TASKS] + [f"fgvc_{d}" for d in FGVC_DATASETS])
    assert names == expected


@pytest.mark.parametrize("task", list(VTAB_TASKS))
def test_vtab_manifest_matches_registry(task):
    manifest, entry = load_manifest(f"vtab-1k/{task}"), VTAB_TASKS[task]
    assert (manifest.name, manifest.num_classes, manifest.group) == (entry.name, entry.num_classes, entry.group)
    assert {s: e.count for s, e in manifest.splits.items()} == entry.split_sizes
    assert set(manifest.source["slices"]) == {"train800", "val200", "train800val200", "test"}
    assert manifest.source["tfds"]


@pytest.mark.parametrize("dataset", list(FGVC_DATASETS))
def test_fgvc_manifest_matches_registry_and_is_pinned(dataset):
    manifest, entry = load_manifest(f"fgvc/{dataset}"), FGVC_DATASETS[dataset]
    assert (manifest.num_classes, manifest.image_folder) == (entry.num_classes, entry.image_folder)
    assert {s: e.count for s, e in manifest.splits.items()} == entry.split_sizes
    for split, e in manifest.splits.items():
        assert e.url == f"https://raw.githubusercontent.com/savadikarc/gift/{COMMIT}/data/{dataset}/{split}.json"
        assert len(e.sha256) == 64
        if FGVC_REFERENCE.is_dir():
            assert sha256_of(FGVC_REFERENCE / dataset / f"{split}.json") == e.sha256


def test_nabirds_val_holds_553_classes():
    assert load_manifest("fgvc/nabirds").splits["val"].num_classes == 553


def test_aliases_find_the_manifest():
    assert manifest_path("vtab-1k/cifar100").name == "vtab1k_cifar.yaml"
    assert load_manifest("fgvc/dogs").name == "stanforddogs"


def test_roundtrip(tmp_path):
    manifest = load_manifest("fgvc/cub")
    again = read_manifest(write_manifest(manifest, tmp_path / "m.yaml", header="copy"))
    assert again.to_dict() == manifest.to_dict()


def test_invalid_manifests_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"benchmark": "fgvc", "name": "x", "splits": {}}))
    with pytest.raises(ValueError, match=f"manifest {path} lacks the field 'num_classes'"):
        read_manifest(path)
    path.write_text(yaml.safe_dump({"benchmark": "fgvc", "name": "x", "num_classes": 2, "splits": {"dev": {}}}))
    with pytest.raises(ValueError, match="split 'dev' is not one of train, val, test"):
        read_manifest(path)
    path.write_text("benchmark: [")
    with pytest.raises(ValueError, match="is not valid YAML"):
        read_manifest(path)
    with pytest.raises(FileNotFoundError, match="manifest .*missing.yaml does not exist"):
        read_manifest(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError, match="no manifest for vtab-1k/cifar"):
        load_manifest("vtab-1k/cifar", manifest_dir=tmp_path)
