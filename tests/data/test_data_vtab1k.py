"""VTAB-1k folder format: split files, task folders under canonical names or aliases."""

from __future__ import annotations

import re

import pytest

from wegeft_vision.data import load_vtab1k_split, read_split_file, task_dir, write_split_file


def test_roundtrip_and_paths_with_spaces(tmp_path):
    samples = [("images/a b.png", 3), ("images/c.png", 0)]
    path = write_split_file(tmp_path / "train800.txt", samples)
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    assert read_split_file(path) == samples


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("images/a.png", "expected 'relative/path label'"),
        ("images/a.png x", "expected 'relative/path label'"),
        ("images/a.png -1", "label -1 is negative; labels are class indices 0, 1, ..."),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "val200.txt"
    path.write_text(f"images/ok.png 1\n{line}\n")
    with pytest.raises(ValueError, match=rf"val200.txt:2: {re.escape(message)}"):
        read_split_file(path)


def test_load_split_relative_to_task_folder(vtab_root):
    samples, folder = load_vtab1k_split(vtab_root, "cifar100", "val200")
    assert folder == vtab_root / "cifar" and len(samples) == 3
    assert all((folder / rel).is_file() for rel, _ in samples)


def test_task_folder_under_an_alias(vtab_root):
    (vtab_root / "cifar").rename(vtab_root / "cifar100")
    assert task_dir(vtab_root, "cifar") == vtab_root / "cifar100"


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="VTAB-1k root folder .* does not exist"):
        task_dir(tmp_path / "nowhere", "dtd")
    with pytest.raises(FileNotFoundError, match="missing folder for task 'pcam' .* tried patch_camelyon, pcam"):
        task_dir(tmp_path, "pcam")
    (tmp_path / "custom").mkdir()
    with pytest.raises(ValueError, match="unknown VTAB-1k split 'train'"):
        load_vtab1k_split(tmp_path, "custom", "train")
