"""VTAB-1k data versions: the exporter's tfds pins (the authors'), their resolution on a fake tensorflow-datasets, the
manifest it writes, and `data check`'s warning for a VTAB-1k folder of JPEG images."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wegeft_vision.cli import main
from wegeft_vision.data import VTAB_TASKS, read_manifest, read_split_file, sha256_of

from .conftest import make_vtab_task, vtab_manifest, write_image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "export_vtab1k.py"

# the authors' tfds specs (savadikarc/gift, visual_recognition/scripts/vtab/download_vtab.py)
AUTHORS = {
    "cifar": "cifar100:3.*.*",
    "caltech101": "caltech101:3.*.*",
    "dtd": "dtd:3.*.*",
    "oxford_flowers102": "oxford_flowers102:2.*.*",
    "oxford_iiit_pet": "oxford_iiit_pet:3.*.*",
    "svhn": "svhn_cropped:3.*.*",
    "sun397": "sun397/tfds:4.*.*",
    "patch_camelyon": "patch_camelyon:2.*.*",
    "eurosat": "eurosat/rgb:2.*.*",
    "resisc45": "resisc45:3.*.*",
    "diabetic_retinopathy": "diabetic_retinopathy_detection/btgraham-300:3.*.*",
    "clevr_count": "clevr:3.*.*",
    "clevr_dist": "clevr:3.*.*",
    "dmlab": "dmlab:2.0.1",
    "kitti": "kitti:3.2.0",
    "dsprites_loc": "dsprites:2.*.*",
    "dsprites_ori": "dsprites:2.*.*",
    "smallnorb_azi": "smallnorb:2.*.*",
    "smallnorb_ele": "smallnorb:2.*.*",
}


@pytest.fixture(scope="module")
def exporter():
    spec = importlib.util.spec_from_file_location("export_vtab1k_versions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- a fake tensorflow-datasets: builders at one installed version each, slices of a few tiny examples ----------


class FakeBuilder:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.info = types.SimpleNamespace(version=version)
        self.versions = [version]
        self.prepared = False

    def download_and_prepare(self) -> None:
        self.prepared = True

    def as_dataset(self, split: str, shuffle_files: bool = False):
        assert self.prepared and not shuffle_files
        start = int(re.search(r"\[(\d*)", split + "[").group(1) or 0)  # "train[45000:45200]" -> 45000
        for i in range(3):
            image = np.random.default_rng(zlib.crc32(split.encode()) + i).integers(0, 256, (6, 5, 3), dtype=np.uint8)
            image[0, 0, 0] = start % 256  # which slice it came from
            vehicles = {"type": np.array([0]), "location": np.array([[0.0, 0.0, 5.0 + 10 * i]])}
            yield {"image": image, "label": np.int64(i), "objects": vehicles}


def fake_tfds(installed: dict[str, str]) -> types.ModuleType:
    """A `tensorflow_datasets` stand-in: `builder("name[:pin]")` refuses a pin the installed version does not meet,
    as tfds does; `as_numpy` passes the examples through."""
    module = types.ModuleType("tensorflow_datasets")
    module.__version__ = "4.99.0"
    module.calls = []

    def builder(spec: str, data_dir: str | None = None) -> FakeBuilder:
        module.calls.append(spec)
        name, _, pin = spec.partition(":")
        if name not in installed:
            raise ValueError(f"Dataset {name} not found.")
        version = installed[name]
        wanted = pin.split(".") if pin else ["*"] * 3
        if not all(w in ("*", v) for w, v in zip(wanted, version.split("."), strict=True)):
            raise AssertionError(f"Dataset {name} cannot be loaded at version {pin}, only: {version}.")
        return FakeBuilder(name, version)

    module.builder = builder
    module.as_numpy = lambda dataset: dataset
    return module


@pytest.fixture
def tfds(monkeypatch):
    module = fake_tfds({"cifar100": "3.0.2", "kitti": "3.3.0", "dmlab": "2.0.1"})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    return module


# -- the pins ----------------------------------------------------------------------------------------------------


def test_pins_are_the_authors_for_all_19_tasks(exporter):
    assert set(AUTHORS) == set(VTAB_TASKS) and len(AUTHORS) == 19
    pins = {task: exporter.tfds_pin(task) for task in VTAB_TASKS}
    assert {task: pin.spec for task, pin in pins.items()} == AUTHORS
    assert pins["kitti"].pin == "3.2.0" and pins["dmlab"].pin == "2.0.1" and pins["cifar"].pin == "3.*.*"
    assert pins["diabetic_retinopathy"].name == "diabetic_retinopathy_detection/btgraham-300"
    assert exporter.tfds_pin("cifar100") == pins["cifar"]  # aliases resolve


def test_split_strings(exporter):
    assert exporter.tfds_pin("cifar").slices == {
        "train800": "train[:800]",
        "val200": "train[45000:45200]",
        "test": "test",
    }
    assert exporter.tfds_pin("dsprites_loc").slices["test"] == "train[663552:]"
    assert exporter.tfds_pin("smallnorb_ele").slices == {
        "train800": "train[:800]",
        "val200": "test[:200]",
        "test": "test[12150:]",
    }


def test_version_matching(exporter):
    assert exporter.version_matches("3.0.2", "3.*.*") and exporter.version_matches("3.2.0", "3.2.0")
    assert not exporter.version_matches("3.3.0", "3.2.0") and not exporter.version_matches("4.0.0", "3.*.*")
    assert not exporter.version_matches("3.0", "3.*.*")


# -- export on the fake tfds -------------------------------------------------------------------------------------


def test_export_records_pin_and_resolved_version(exporter, tfds, tmp_path, capsys):
    assert exporter.main(["--task", "cifar100", "--task", "dmlab", "--out", str(tmp_path)]) == 0
    assert tfds.calls == ["cifar100:3.*.*", "dmlab:2.0.1"]  # the authors' specs are what tfds is asked for
    manifest = read_manifest(tmp_path / "cifar" / "manifest.yaml")
    assert manifest.benchmark == "vtab-1k" and manifest.name == "cifar" and manifest.num_classes == 100
    source = manifest.source
    assert source["tfds"] == "cifar100:3.*.*" and source["tfds_name"] == "cifar100"
    assert source["tfds_pin"] == "3.*.*" and source["tfds_version"] == "3.0.2" and source["tfds_pin_met"] is True
    assert source["tensorflow_datasets"] == "4.99.0"
    assert source["slices"]["val200"] == "train[45000:45200]"
    split = manifest.splits["train800val200"]
    assert split.count == 6 and split.sha256 == sha256_of(tmp_path / "cifar" / "train800val200.txt")
    samples = read_split_file(tmp_path / "cifar" / "val200.txt")
    first = np.asarray(Image.open(tmp_path / "cifar" / samples[0][0]))
    assert first[0, 0, 0] == 45000 % 256  # read from the val200 slice, written losslessly
    dmlab = read_manifest(tmp_path / "dmlab" / "manifest.yaml").source
    assert (dmlab["tfds_pin"], dmlab["tfds_version"]) == ("2.0.1", "2.0.1")
    out = capsys.readouterr().out
    assert "(cifar100 3.0.2)" in out and "(dmlab 2.0.1)" in out
    # the written folder checks against the manifest written beside it, without a warning (PNG)
    code = main(["data", "check", "vtab-1k/cifar", "--root", str(tmp_path), "--manifest", str(manifest.path)])
    assert code == 0 and "warning" not in capsys.readouterr().out


def test_mismatching_version_is_refused(exporter, tfds, tmp_path, capsys):
    assert exporter.main(["--task", "cifar", "--task", "kitti", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "kitti: the authors load kitti at version 3.2.0 (kitti:3.2.0)" in err
    assert "tensorflow-datasets 4.99.0 provides kitti 3.3.0" in err and "--allow-other-version" in err
    assert not (tmp_path / "cifar").exists()  # every pin is checked before anything is written


def test_refusal_names_a_missing_dataset(exporter, tfds, tmp_path, capsys):
    assert exporter.main(["--task", "dtd", "--out", str(tmp_path)]) == 2
    assert "dtd: the authors load dtd at version 3.*.* (dtd:3.*.*)" in capsys.readouterr().err
    with pytest.raises(exporter.VersionRefused, match=r"provides no dtd \(ValueError: Dataset dtd not found"):
        exporter.resolve(tfds, "dtd")
    with pytest.raises(exporter.VersionRefused, match="dtd: tensorflow-datasets builds no version of dtd"):
        exporter.resolve(tfds, "dtd", allow_other_version=True)


def test_allow_other_version_records_the_version_used(exporter, tfds, tmp_path):
    assert exporter.main(["--task", "kitti", "--out", str(tmp_path), "--allow-other-version"]) == 0
    source = read_manifest(tmp_path / "kitti" / "manifest.yaml").source
    assert (source["tfds_pin"], source["tfds_version"], source["tfds_pin_met"]) == ("3.2.0", "3.3.0", False)
    assert read_split_file(tmp_path / "kitti" / "train800.txt")[:2] == [
        ("images/train800/000000.png", 0),  # nearest vehicle at 5 m
        ("images/train800/000001.png", 1),  # at 15 m
    ]


def test_resolved_version_outside_the_pin_is_refused(exporter, monkeypatch):
    module = fake_tfds({"cifar100": "4.0.0"})
    module.builder = lambda spec, data_dir=None: FakeBuilder("cifar100", "4.0.0")  # ignores the pin
    with pytest.raises(exporter.VersionRefused, match="it resolved 4.0.0"):
        exporter.resolve(module, "cifar")


# -- data check: JPEG folders ------------------------------------------------------------------------------------


def jpeg_task(root: Path, jpeg_names: bool = True) -> Path:
    """The tiny cifar task with its first three images re-encoded as JPEG (named .jpg, or keeping .png)."""
    folder = make_vtab_task(root, "cifar")
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        rewritten = []
        for rel, label in read_split_file(folder / name):
            index = int(Path(rel).stem)
            if index < 3:
                target = Path(rel).with_suffix(".jpg") if jpeg_names else Path(rel)
                (folder / rel).unlink(missing_ok=True)
                write_image(folder / f"{target}.tmp.jpg", seed=index).rename(folder / target)
                rel = str(target)
            rewritten.append(f"{rel} {label}\n")
        (folder / name).write_text("".join(rewritten))
    return folder


def data_check(capsys, *args) -> tuple[int, str]:
    code = main(["data", "check", *map(str, args)])
    return code, capsys.readouterr().out


def test_jpeg_folder_warns_once_naming_the_exporter(tmp_path, capsys):
    jpeg_task(tmp_path / "vtab")
    manifest = vtab_manifest(tmp_path / "vtab1k_cifar.yaml")
    code, out = data_check(capsys, "vtab-1k/cifar", "--root", tmp_path / "vtab", "--manifest", manifest)
    assert code == 0, out
    assert out.count("[jpeg images]") == 1 and out.rstrip().endswith("OK, 1 warning(s)")
    assert "3 of 13 listed images are JPEG" in out and "scripts/export_vtab1k.py --task cifar" in out
    assert str(tmp_path / "vtab" / "cifar") in out


def test_jpeg_bytes_under_png_names_are_found_by_their_magic(tmp_path, capsys):
    jpeg_task(tmp_path / "vtab", jpeg_names=False)
    manifest = vtab_manifest(tmp_path / "vtab1k_cifar.yaml")
    code, out = data_check(capsys, "vtab-1k/cifar", "--root", tmp_path / "vtab", "--manifest", manifest)
    assert code == 0 and "3 of 13 listed images are JPEG" in out
    code, out = data_check(capsys, "vtab-1k/cifar", "--root", tmp_path / "vtab", "--manifest", manifest, "--no-images")
    assert code == 0 and "[jpeg images]" not in out  # without reading images, by suffix alone


def test_png_folder_does_not_warn(vtab_root, vtab_tiny_manifest, capsys):
    code, out = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 0 and "warning" not in out and out.rstrip().endswith("OK")


def test_own_folder_of_jpeg_images_does_not_warn(tmp_path, capsys):
    folder = jpeg_task(tmp_path / "mine")  # a custom folder: the exporter cannot make it, so no advice
    code, out = data_check(capsys, folder)
    assert code == 0, out
    assert "[jpeg images]" not in out
