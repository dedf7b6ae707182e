"""Messages that name the real culprit and the command-line way out: a file given as `--out`, a file given as a task,
a damaged `protocol.json`, a negative label, random bytes given as a checkpoint, counts that changed; and a dry run
that plans every bundled preset, synthetic tasks included, without writing them."""

from __future__ import annotations

import json

import pytest
import yaml

from wegeft_vision.cli import main
from wegeft_vision.data import BenchmarkDataModule, write_synthetic
from wegeft_vision.files import UnreadableFile, UnsafePickle, safe_torch_load
from wegeft_vision.protocol.preset import CONFIG_DIR

SMOKE = ["protocol", "--config", "smoke", "--methods", "linear", "--no-progress"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_out_that_is_a_file_is_named_as_such(tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("my notes")
    assert main([*SMOKE, "--out", str(taken)]) == 2
    assert f"--out {taken}: {taken} is a file, not a folder" in one_line(capsys)
    assert main([*SMOKE, "--out", str(taken / "run")]) == 2  # a file above it
    assert f"--out {taken / 'run'}: {taken} is a file, not a folder" in one_line(capsys)
    assert taken.read_text() == "my notes"


def test_a_file_given_as_a_task_or_dataset_is_named_as_such(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    recipe = str(CONFIG_DIR / "fit" / "smoke.yaml")
    assert main(["fit", "--config", recipe, "--data.dataset", str(photo)]) == 2
    err = one_line(capsys)
    assert f"--data.dataset {photo}: task folder {photo} is a file" in err and "compute_fn" not in err
    assert main(["data", "check", str(photo)]) == 2
    assert f"task folder {photo} is a file" in one_line(capsys)


def test_a_damaged_protocol_json_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMOKE, "--out", str(out), "--dry-run"]) == 0
    out.mkdir(exist_ok=True)
    (out / "protocol.json").write_text('{"preset": "smo')  # cut short by something outside the toolkit
    assert main([*SMOKE, "--out", str(out)]) == 2
    err = one_line(capsys)
    assert f"{out / 'protocol.json'} is damaged (" in err and "restore it, or run in another --out" in err


def test_a_negative_label_is_named_as_negative(tmp_path):
    folder = write_synthetic(tmp_path, "shape", {"train800": 4, "val200": 2, "test": 2}, size=16)
    lines = (folder / "test.txt").read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + " -1"
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    data = BenchmarkDataModule(
        "vtab-1k/synthetic_shape", tmp_path, stage="final", manifest=folder / "manifest.yaml", num_workers=0
    )
    with pytest.raises(ValueError, match=r"test.txt:2: label -1 is negative; labels are class indices 0, 1, "):
        data.setup()


def test_random_bytes_are_an_unreadable_file_not_a_malicious_pickle(tmp_path, capsys):
    noise = tmp_path / "last.pth.tar"
    noise.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UnreadableFile, match=r"not a PyTorch file"):
        safe_torch_load(noise)
    assert not isinstance(UnreadableFile("x"), UnsafePickle)
    assert main(["import-checkpoint", str(noise), "--out", str(tmp_path / "a.safetensors")]) == 2
    err = one_line(capsys)
    assert f"authors' checkpoint {noise} is not a readable PyTorch checkpoint: not a PyTorch file" in err
    assert "refused" not in err and not (tmp_path / "a.safetensors").exists()


def test_counts_that_changed_name_the_command_line_way_out(tmp_path):
    folder = write_synthetic(tmp_path, "shape", {"train800": 4, "val200": 2, "test": 3}, size=16)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["splits"]["test"]["count"] = 5
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    data = BenchmarkDataModule(
        "vtab-1k/synthetic_shape", tmp_path, stage="final", manifest=folder / "manifest.yaml", num_workers=0
    )
    way = r"test.txt: 3 entries, expected 5; to accept it: --set data.allow_count_mismatch=true \(protocol\)"
    with pytest.raises(ValueError, match=way):
        data.setup()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "protocol").glob("*.yaml")))
def test_every_bundled_preset_plans_with_its_own_tasks_or_registry_ones(preset, tmp_path, capsys):
    """A dry run plans every preset; synthetic tasks are described from the preset's options, never written."""
    out = tmp_path / "plan"
    config = yaml.safe_load((CONFIG_DIR / "protocol" / f"{preset}.yaml").read_text())
    tasks = [] if config.get("tasks") else ["--benchmark", "vtab-1k", "--tasks", "dtd"]
    assert main(["protocol", "--config", preset, *tasks, "--dry-run", "--out", str(out)]) == 0, capsys.readouterr()
    plan = json.loads((out / "plan.json").read_text())
    assert plan and sorted(p.name for p in out.iterdir()) == ["plan.json"]  # no data, no storage written
    if preset == "smoke":
        sizes = {(run["task"], run["stage"]): (run["train_images"], run["eval_images"]) for run in plan}
        assert sizes[("synthetic_shape", "search")] == (48, 24) and sizes[("synthetic_colour", "final")] == (48, 32)
