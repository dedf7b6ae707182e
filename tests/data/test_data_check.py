"""`wegeft-vision data check`: passes on generated folders of both formats and names each planted fault."""

from __future__ import annotations

import json
import shutil

import pytest

from wegeft_vision.cli import main
from wegeft_vision.data import check_fgvc, check_vtab1k, sha256_of, write_synthetic

from .conftest import fgvc_manifest, vtab_manifest


def data_check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- passing folders ---------------------------------------------------------------------------------------------


def test_vtab_passes_with_its_manifest(vtab_root, vtab_tiny_manifest, capsys):
    code, out, _ = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 0, out
    assert "train800        6 entries / 6 expected" in out and "train800val200  9 entries" in out
    assert out.rstrip().endswith("OK")


def test_vtab_passes_with_allow_count_mismatch(vtab_root, capsys):
    code, out, _ = data_check(capsys, "vtab-1k/cifar100", "--root", vtab_root, "--allow-count-mismatch")
    assert code == 0, out
    assert "test.txt: 4 entries, expected 10,000 (accepted by --allow-count-mismatch)" in out


def test_fgvc_passes_with_its_manifest(fgvc_root, fgvc_tiny_manifest, capsys):
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest)
    assert code == 0, out
    assert "val             2 entries / 2 expected, 2 classes, 2 images: ok" in out


def test_synthetic_passes(tmp_path, capsys):
    folder = write_synthetic(tmp_path, "count", {"train800": 4, "val200": 2, "test": 3}, size=24)
    manifest = folder / "manifest.yaml"
    code, out, _ = data_check(capsys, "vtab-1k/synthetic_count", "--root", tmp_path, "--manifest", manifest)
    assert code == 0, out


# -- each fault --------------------------------------------------------------------------------------------------


def test_missing_task_folder(tmp_path, capsys):
    code, out, err = data_check(capsys, "vtab-1k/dtd", "--root", tmp_path)
    assert code == 1
    assert "[missing folder] missing folder for task 'dtd'" in out and "missing folder" in err


def test_missing_fgvc_image_folder(fgvc_root, fgvc_tiny_manifest, capsys):
    shutil.rmtree(fgvc_root / "images")
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest)
    assert code == 1 and f"[missing folder] missing image folder 'images' of cub: {fgvc_root / 'images'}" in out


def test_missing_split_file(vtab_root, vtab_tiny_manifest, capsys):
    (vtab_root / "cifar" / "val200.txt").unlink()
    code, out, _ = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 1 and f"[missing file] missing split file {vtab_root / 'cifar' / 'val200.txt'}" in out


def test_missing_image_reported_in_every_split_that_lists_it(vtab_root, vtab_tiny_manifest, capsys):
    missing = vtab_root / "cifar" / "images" / "val200" / "0006.png"
    missing.unlink()
    code, out, err = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 1
    assert f"[missing file] val200.txt:1: missing image {missing}" in out
    assert f"[missing file] train800val200.txt:7: missing image {missing}" in out
    assert "2 problem(s): missing file" in err


def test_unreadable_image(fgvc_root, fgvc_tiny_manifest, capsys):
    broken = fgvc_root / "images" / "001.Bird" / "0000.jpg"
    broken.write_bytes(b"not a jpeg at all")
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest)
    assert code == 1 and f"[unreadable file] train.json:1: image {broken} is unreadable" in out


def test_truncated_png_is_unreadable(vtab_root, vtab_tiny_manifest, capsys):
    image = vtab_root / "cifar" / "images" / "test" / "0009.png"
    image.write_bytes(image.read_bytes()[:60])
    code, out, _ = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 1 and f"[unreadable file] test.txt:1: image {image} is unreadable" in out


def test_count_mismatch(vtab_root, capsys):
    code, out, err = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root)
    assert code == 1
    expected = "[count mismatch] {} 6 entries, expected 800 (pass --allow-count-mismatch to accept)"
    assert expected.format(str(vtab_root / "cifar" / "train800.txt") + ":") in out
    assert "4 problem(s): count mismatch" in err


def test_class_count_mismatch(fgvc_root, fgvc_tiny_manifest, capsys):
    (fgvc_root / "train.json").write_text(json.dumps({"001.Bird/0000.jpg": "001", "002.Bird/0001.jpg": "002"}))
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest, "--no-images")
    assert code == 1 and "train.json: 2 classes, expected 3" in out
    assert (
        "[unknown label] test.json: label '003' (1 image(s), e.g. 003.Bird/0008.jpg) is absent from train.json" in out
    )


def test_checksum_mismatch(fgvc_root, tmp_path, capsys):
    good = {s: sha256_of(fgvc_root / f"{s}.json") for s in ("train", "val", "test")}
    manifest = fgvc_manifest(tmp_path / "m.yaml", sha256={**good, "val": "0" * 64})
    code, out, err = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", manifest)
    assert code == 1
    assert f"[checksum mismatch] {fgvc_root / 'val.json'}: sha256 {good['val']}, expected {'0' * 64}" in out
    assert "1 problem(s): checksum mismatch" in err


def test_bundled_fgvc_manifest_checks_counts_and_checksums(fgvc_root, capsys):
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root)
    assert code == 1
    assert "[checksum mismatch]" in out and "6 entries, expected 5,394" in out and "3 classes, expected 200" in out


def test_unknown_vtab_label(vtab_root, capsys):
    split = vtab_root / "cifar" / "test.txt"
    split.write_text(split.read_text().replace("images/test/0010.png 0", "images/test/0010.png 100"))
    code, out, _ = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--allow-count-mismatch")
    assert code == 1 and "[unknown label] test.txt: label 100 of images/test/0010.png is outside 0..99" in out


def test_unknown_fgvc_label(fgvc_root, fgvc_tiny_manifest, capsys):
    val = json.loads((fgvc_root / "val.json").read_text())
    (fgvc_root / "val.json").write_text(json.dumps({k: "777" for k in val}))
    code, out, _ = data_check(capsys, "fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest)
    assert code == 1 and "[unknown label] val.json: label '777' (2 image(s), e.g. 002.Bird/0006.jpg)" in out


def test_malformed_split_file_is_unreadable(vtab_root, vtab_tiny_manifest, capsys):
    (vtab_root / "cifar" / "train800.txt").write_text("images/train800/0000.png\n")
    code, out, _ = data_check(capsys, "vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest)
    assert code == 1 and "[unreadable file]" in out and "train800.txt:1: expected 'relative/path label'" in out


def test_split_files_in_a_separate_folder(fgvc_root, fgvc_tiny_manifest, tmp_path, capsys):
    splits = tmp_path / "splits" / "cub"
    splits.mkdir(parents=True)
    for name in ("train", "val", "test"):
        (fgvc_root / f"{name}.json").rename(splits / f"{name}.json")
    args = ["fgvc/cub", "--root", fgvc_root, "--manifest", fgvc_tiny_manifest]
    code, out, _ = data_check(capsys, *args, "--splits", tmp_path / "splits")
    assert code == 0, out
    assert data_check(capsys, *args)[0] == 1  # not found next to the images any more


def test_max_problems_caps_the_listing(vtab_root, vtab_tiny_manifest, capsys):
    for image in (vtab_root / "cifar" / "images" / "test").iterdir():
        image.unlink()
    args = ["vtab-1k/cifar", "--root", vtab_root, "--manifest", vtab_tiny_manifest, "--max-problems", "1"]
    code, out, _ = data_check(capsys, *args)
    assert code == 1 and "... and 3 more (--max-problems 0 lists all)" in out


# -- user errors: one line, exit 2 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["vtab-1k/cifar10", "--root", "."], "unknown VTAB-1k task 'cifar10'"),
        (["vtab-1k/cifar", "--root", ".", "--splits", "."], "(--splits) applies to FGVC datasets"),
        (["cifar", "--root", "."], "should read BENCHMARK/NAME"),
        (["fgvc/cub", "--root", ".", "--manifest", "missing.yaml"], "manifest missing.yaml does not exist"),
    ],
)
def test_user_errors_exit_2(args, message, capsys):
    code, _, err = data_check(capsys, *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_manifest_of_the_other_benchmark(vtab_root, fgvc_tiny_manifest):
    with pytest.raises(ValueError, match="describes a fgvc dataset, not vtab-1k"):
        check_vtab1k(vtab_root, "cifar", manifest=fgvc_tiny_manifest)


def test_structured_report(vtab_root, tmp_path):
    manifest = vtab_manifest(tmp_path / "m.yaml", counts={"train800": 6, "val200": 3, "test": 5})
    report = check_vtab1k(vtab_root, "cifar", manifest=manifest)
    assert not report.ok and [s.split for s in report.splits] == ["train800", "val200", "train800val200", "test"]
    (problem,) = report.all_problems
    assert problem.kind == "count mismatch" and report.splits[3].problems == [problem]
    assert report.splits[0].images_checked == 6 and report.splits[0].num_classes == 5
    assert check_fgvc(tmp_path / "nothing", "cub").problems[0].kind == "missing folder"
