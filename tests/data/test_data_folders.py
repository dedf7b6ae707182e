"""A user's own folders as tasks: both layouts, the manifest written on first use, loading, and `data check`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from wegeft_vision.cli import main
from wegeft_vision.data import BenchmarkDataModule, read_manifest, sha256_of
from wegeft_vision.data.folders import describe_folder, detect_layout, is_folder_ref, open_folder

from .conftest import TINY_CONFIG, make_vtab_task, write_image

CLASSES = ("cat", "dog", "owl")
IMAGEFOLDER_COUNTS = {"train": (3, 2, 2), "val": (1, 1, 0), "test": (2, 1, 1)}  # per class; val lacks "owl"


def make_imagefolder(folder: Path) -> Path:
    """`<folder>/{train,val,test}/<class>/<n>.png` with the per-class counts of `IMAGEFOLDER_COUNTS`."""
    seed = 0
    for split, counts in IMAGEFOLDER_COUNTS.items():
        for name, count in zip(CLASSES, counts, strict=True):
            for k in range(count):
                write_image(folder / split / name / f"{k}.png", seed=seed)
                seed += 1
    return folder


def data_check(capsys, *args) -> tuple[int, str]:
    code = main(["data", "check", *map(str, args)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("./mine", True),
        ("/data/mine", True),
        ("~/mine", True),
        ("data/mine", True),
        (Path("mine"), True),
        ("vtab-1k/cifar", False),
        ("VTAB/cifar", False),
        ("fgvc/cub", False),
        ("custom/mine", False),
        ("cifar", False),
    ],
)
def test_folder_references_are_told_from_benchmark_names(ref, expected):
    assert is_folder_ref(ref) is expected


def test_imagefolder_manifest_is_written_on_first_use(tmp_path):
    folder = make_imagefolder(tmp_path / "pets")
    assert detect_layout(folder) == "imagefolder"
    manifest = open_folder(folder)
    assert (folder / "manifest.yaml").is_file()
    assert manifest.benchmark == "custom" and manifest.format == "imagefolder" and manifest.name == "pets"
    assert manifest.classes == CLASSES and manifest.num_classes == 3
    assert {s: e.count for s, e in manifest.splits.items()} == {"train": 7, "val": 2, "test": 4}
    assert all(len(e.sha256) == 64 for e in manifest.splits.values())
    raw = yaml.safe_load((folder / "manifest.yaml").read_text())
    raw["group"] = "natural"  # a user may edit it; later uses read it back, never rewrite it
    (folder / "manifest.yaml").write_text(yaml.safe_dump(raw))
    assert open_folder(folder).group == "natural"


def test_vtab_layout_classes_from_classes_txt_or_labels(tmp_path):
    folder = make_vtab_task(tmp_path, "mine", num_classes=4)
    described = describe_folder(folder)
    assert described.format == "vtab-1k" and described.classes == ("0", "1", "2", "3")
    assert described.splits["test"].sha256 == sha256_of(folder / "test.txt")
    (folder / "classes.txt").write_text("a\nb\nc\nd\ne\n")  # a class with no image yet still counts
    assert describe_folder(folder, group="specialized").classes == ("a", "b", "c", "d", "e")
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"classes.txt names 2 classes, but the split files use label 3"):
        describe_folder(folder)


def test_layout_errors_name_the_folder_and_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task folder .*nowhere does not exist"):
        detect_layout(tmp_path / "nowhere")
    folder = make_vtab_task(tmp_path, "half")
    (folder / "val200.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"half \(VTAB-1k layout\) lacks val200.txt"):
        open_folder(folder)
    assert not (folder / "manifest.yaml").exists()  # nothing written for a folder that is not a task
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither the VTAB-1k layout .* nor the ImageFolder layout"):
        open_folder(tmp_path / "empty")


@pytest.mark.parametrize("stage", ["search", "final"])
def test_imagefolder_serves_the_protocol_stages(tmp_path, stage):
    folder = make_imagefolder(tmp_path / "pets")
    data = BenchmarkDataModule(str(folder), stage=stage, data_config=TINY_CONFIG, batch_size=4, num_workers=0)
    data.setup()
    assert data.benchmark == "custom" and data.num_classes == 3
    train = {(p.relative_to(folder).parts[0], label) for p, label in data.samples["train"]}
    expected_train = {("train", 0), ("train", 1), ("train", 2)}
    if stage == "final":  # as VTAB-1k: the final model learns from train and val
        expected_train |= {("val", 0), ("val", 1)}
    assert train == expected_train
    assert data.eval_split == ("val" if stage == "search" else "test")
    for path, label in data.samples["eval"]:
        assert path.parent.name == CLASSES[label]
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.max() < 3


def test_vtab_folder_serves_through_its_path(tmp_path):
    folder = make_vtab_task(tmp_path, "mine", num_classes=3)
    data = BenchmarkDataModule(str(folder), stage="final", data_config=TINY_CONFIG, num_workers=0)
    data.setup()
    assert data.train_splits == ("train800val200",) and len(data.samples["train"]) == 9
    assert read_manifest(folder / "manifest.yaml").num_classes == 3
    with pytest.raises(ValueError, match="mine is a task folder with its own manifest.yaml; drop manifest="):
        BenchmarkDataModule(str(folder), manifest=tmp_path / "other.yaml", data_config=TINY_CONFIG)


def test_data_check_passes_on_both_layouts(tmp_path, capsys):
    code, out = data_check(capsys, make_imagefolder(tmp_path / "pets"))
    assert code == 0, out
    assert out.startswith("custom/pets at") and "val             2 entries / 2 expected, 2 classes, 2 images: ok" in out
    code, out = data_check(capsys, make_vtab_task(tmp_path, "mine"))
    assert code == 0, out
    assert "custom/mine" in out and out.rstrip().endswith("OK")


def test_data_check_names_each_change_since_the_manifest(tmp_path, capsys):
    folder = make_imagefolder(tmp_path / "pets")
    open_folder(folder)
    (folder / "test" / "dog" / "0.png").write_bytes(b"not an image")
    write_image(folder / "train" / "cat" / "9.png", seed=99)
    shutil.copytree(folder / "val" / "cat", folder / "val" / "lynx")
    (folder / "test" / "cat" / "1.png").rename(folder / "test" / "cat" / "moved.png")
    code, out = data_check(capsys, folder)
    assert code == 1
    assert "train/cat/9.png" not in out and "train: 8 images, expected 7" in out
    assert "[unknown label]" in out and "lynx are not among the classes of train/" in out
    assert "test/dog/0.png is unreadable" in out
    assert "[checksum mismatch]" in out and "images were renamed or moved since" in out
    code, out = data_check(capsys, folder, "--allow-count-mismatch")
    assert "accepted by --allow-count-mismatch" in out


def test_data_check_refuses_root_or_manifest_for_a_folder(tmp_path, capsys):
    folder = make_imagefolder(tmp_path / "pets")
    assert main(["data", "check", str(folder), "--manifest", str(tmp_path / "m.yaml")]) == 2
    assert "is a task folder: it holds its own manifest" in capsys.readouterr().err
    assert main(["data", "check", "vtab-1k/cifar"]) == 2
    assert "--root is required for vtab-1k/cifar" in capsys.readouterr().err
