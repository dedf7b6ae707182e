"""Folders of one's own as they come: copied, linked in loops, partly unreadable, with empty classes, stray files or
one image in two classes. Each is planted here; `data check`, the datamodule and the protocol read the folder the same
way (`data.class_folders`) and either use exactly the data on the command line or refuse it, naming the path."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from wegeft_vision.cli import main
from wegeft_vision.data import BenchmarkDataModule
from wegeft_vision.data.class_folders import scan_split
from wegeft_vision.data.folders import open_folder
from wegeft_vision.data.tasks import open_task

CLASSES = ("ant", "bee", "cat")


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_task(folder: Path, per_class: dict[str, int] | None = None) -> Path:
    """An ImageFolder task: per split and class, `per_class[split]` images (seeded by path)."""
    per_class = per_class or {"train": 4, "val": 2, "test": 3}
    seed = 0
    for split, count in per_class.items():
        for name in CLASSES:
            for i in range(count):
                seed += 1
                write_image(folder / split / name / f"{i}.png", seed)
    return folder


def check(capsys, folder: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["data", "check", str(folder), "--no-images", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def protocol(out: Path, *tasks: Path) -> int:
    args = ["protocol", "--config", "smoke", "--methods", "linear", "--no-progress", "--out", str(out)]
    return main([*args, "--tasks", *map(str, tasks)])


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_copied_folder_trains_on_itself_or_is_refused_never_on_the_original(tmp_path, capsys):
    clean = make_task(tmp_path / "clean")
    assert check(capsys, clean)[0] == 0  # writes clean/manifest.yaml
    grown = tmp_path / "grown"
    shutil.copytree(clean, grown)  # manifest.yaml included: it still describes clean
    write_image(grown / "test" / "bee" / "extra.png", 999)

    out = tmp_path / "run"
    assert protocol(out, grown, clean) == 1  # grown is left out, clean runs
    printed = capsys.readouterr().out
    assert f"failed: custom/grown: left out: {grown / 'manifest.yaml'} was written for {clean}" in printed
    assert f"({grown} is a copy or a move of it); test/ has changed since (10 images now, 9 then)" in printed
    assert f"wegeft-vision data check {grown} --update-manifest" in printed
    assert {row["task"] for row in rows(out)} == {"clean"}

    code, _, err = check(capsys, grown)
    assert code == 1 and "test: 10 images, expected 9" in err
    assert check(capsys, grown, "--update-manifest")[0] == 0
    assert yaml.safe_load((grown / "manifest.yaml").read_text())["folder"] == str(grown)
    capsys.readouterr()
    assert protocol(tmp_path / "again", grown) == 0
    finals = [row for row in rows(tmp_path / "again") if row["stage"] == "final"]
    assert [(row["task"], row["eval_size"]) for row in finals] == [("grown", "10")]  # its own test images


def test_a_moved_folder_with_the_same_data_is_used_as_it_is(tmp_path):
    first = make_task(tmp_path / "first")
    open_folder(first)
    moved = tmp_path / "elsewhere" / "first"
    shutil.move(first, moved)
    task = open_task(moved)
    task.verify()  # nothing changed but the place
    assert task.root == moved and len(task.samples("test")) == 9


def test_a_link_loop_in_a_class_folder_is_refused_not_followed(tmp_path, capsys):
    folder = make_task(tmp_path / "loop")
    os.symlink(folder / "train" / "cat", folder / "train" / "cat" / "again")  # train/cat/again -> train/cat
    code, out, err = check(capsys, folder)  # first use: the manifest cannot be written from a looping folder
    assert code == 2 and "train/cat/again: a link back to" in err and "a loop: not followed" in err
    scan = scan_split(folder, "train", CLASSES)
    assert len(scan.samples) == 12 and scan.errors == [
        f"{folder / 'train' / 'cat' / 'again'}: a link back to {folder / 'train' / 'cat'}, which holds it "
        "(a loop: not followed)"
    ]
    assert protocol(tmp_path / "run", folder) == 2
    assert "no task can run: custom/loop:" in capsys.readouterr().err


def test_links_are_followed_once_and_an_image_in_two_classes_is_named(tmp_path, capsys):
    folder = make_task(tmp_path / "links")
    elsewhere = make_task(tmp_path / "disk")  # images kept on another disk, linked in: the owner's choice
    os.symlink(elsewhere / "train" / "ant", folder / "train" / "ant" / "more")
    os.symlink(elsewhere / "train" / "ant", folder / "train" / "ant" / "same")  # the same folder twice in one class
    assert check(capsys, folder)[0] == 0  # its manifest describes the linked images, each once
    assert yaml.safe_load((folder / "manifest.yaml").read_text())["splits"]["train"]["count"] == 16
    os.symlink(folder / "train" / "ant" / "0.png", folder / "train" / "bee" / "0b.png")
    code, out, err = check(capsys, folder)
    two = f"{folder / 'train' / 'bee' / '0b.png'}: the same file as {folder / 'train' / 'ant' / '0.png'}"
    assert code == 1 and f"[image in two classes] {two}, in classes ant and bee" in out
    assert "warning [duplicate entry]" in out and "listed twice in class ant" in out
    with pytest.raises(ValueError, match="in classes ant and bee"):
        open_task(folder).samples("train")


def test_empty_classes_and_stray_files_are_reported(tmp_path, capsys):
    folder = make_task(tmp_path / "gaps")
    for image in (folder / "val" / "cat").iterdir():
        image.unlink()  # val holds no cat: a warning (val and test may lack a class)
    (folder / "train" / "notes.txt").write_text("where the photos came from")
    (folder / "train" / "ant" / "labels.csv").write_text("a,b")
    assert check(capsys, folder)[0] == 0  # warnings let it pass
    code, out, _ = check(capsys, folder)
    assert code == 0
    assert f"warning [empty class] {folder / 'val' / 'cat'}: holds no image (no image of this class here)" in out
    assert f"warning [stray file] {folder / 'train' / 'notes.txt'}: not in a class folder (not read)" in out
    assert f"warning [stray file] {folder / 'train' / 'ant' / 'labels.csv'}: not an image file" in out

    for image in (folder / "train" / "bee").iterdir():
        image.unlink()  # a class without one training image: an error, wherever it is read
    code, out, _ = check(capsys, folder)
    assert code == 1 and f"[empty class] {folder / 'train' / 'bee'}: holds no image (a class without training" in out
    data = BenchmarkDataModule(str(folder), stage="search", allow_count_mismatch=True, num_workers=0)
    with pytest.raises(ValueError, match=r"train/bee: holds no image \(a class without training images\)"):
        data.setup()


def _without_root_powers(command: list[str]) -> list[str]:
    """`command` as a process that obeys file permissions: root without the capabilities that bypass them
    (`setpriv`, util-linux), or as it is for another user."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every folder reads, whatever its permissions")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]


def test_an_unreadable_class_folder_is_refused_by_name_not_read_as_empty(tmp_path, capsys):
    """As a user who cannot read one class folder (`chmod 000`): named, never read as an empty class."""
    folder = make_task(tmp_path / "locked")
    (folder / "train" / "bee").chmod(0o000)
    probe = (
        "import sys; from wegeft_vision.data.class_folders import scan_split;"
        "scan = scan_split(sys.argv[1], 'train', ('ant', 'bee', 'cat'));"
        "print(len(scan.samples)); print(*scan.errors, sep='\\n')"
    )
    try:
        command = _without_root_powers([sys.executable, "-c", probe, str(folder)])
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        count, *errors = result.stdout.splitlines()
        assert count == "8" and errors == [f"{folder / 'train' / 'bee'}: cannot be read (Permission denied)"]
        cli = _without_root_powers([sys.executable, "-m", "wegeft_vision.cli", "data", "check", str(folder)])
        result = subprocess.run(cli, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and f"{folder / 'train' / 'bee'}: cannot be read" in result.stderr
        assert not (folder / "manifest.yaml").exists()  # no manifest pinning the smaller count
    finally:
        (folder / "train" / "bee").chmod(0o755)
