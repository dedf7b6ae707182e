"""Faults in a protocol: killed at any point of a unit, killed parent of workers, diverged runs, a broken task among
good ones, changed data, a storage URL that cannot work. Each asserts the message, the exit code, and that what was
written before the fault is intact."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic
from wegeft_vision.protocol.preset import CONFIG_DIR as CONFIGS
from wegeft_vision.protocol.results import row_key
from wegeft_vision.training import ClassificationModule

SMOKE = ["--config", "smoke", "--no-progress", "--poll", "0.2"]
ONE_UNIT = [*SMOKE, "--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]
LONG_FINAL = ["--set", "model.epochs=12", "--set", "trainer.max_epochs=12"]  # a final long enough to be killed in


def rows_of(out: Path) -> list[dict[str, str]]:
    if not (out / "results.csv").is_file():
        return []
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def final_checkpoints(out: Path) -> list[Path]:
    return list((out / "runs").glob("*/*/*/seed*/final/*/checkpoints/last.ckpt"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]) == 0
    return out


def start(out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "wegeft_vision.cli", "protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 180, sig: int = signal.SIGKILL) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    assert process.poll() is None, "the protocol finished before it could be killed"
    process.send_signal(sig)
    process.wait()


@pytest.mark.parametrize(
    "moment",
    [
        "first search run",  # the first grid position done, the second training
        "last search run",  # every grid position done: selection and final next
        "final run",  # in the middle of the final run's schedule
    ],
)
def test_a_protocol_killed_anywhere_completes_on_rerun_with_nothing_trained_twice(uninterrupted, tmp_path, moment):
    out = tmp_path / "killed"
    process = start(out)
    ready = {
        "first search run": lambda: len(rows_of(out)) >= 1,
        "last search run": lambda: len(rows_of(out)) >= 4,
        "final run": lambda: bool(final_checkpoints(out)),
    }[moment]
    kill_when(process, ready)
    done_before = {r["run_dir"]: os.stat(out / r["run_dir"] / "result.json").st_mtime_ns for r in rows_of(out)}
    csv_before = (out / "results.csv").read_bytes()

    assert main(["protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]) == 0
    rows = rows_of(out)
    assert [r["stage"] for r in rows] == ["search"] * 4 + ["final"]
    assert len({row_key(r) for r in rows}) == 5
    assert (out / "results.csv").read_bytes().startswith(csv_before)  # what was written before the kill is intact
    for run_dir, mtime in done_before.items():  # none trained twice
        assert os.stat(out / run_dir / "result.json").st_mtime_ns == mtime
    final = next(r for r in rows if r["stage"] == "final")
    expected = next(r for r in rows_of(uninterrupted) if r["stage"] == "final")
    assert (final["lr"], final["weight_decay"], final["top1"]) == (
        expected["lr"],
        expected["weight_decay"],
        expected["top1"],
    )
    if moment == "final run":  # resumed from the epoch it was killed at, not from epoch 0
        result = json.loads((out / final["run_dir"] / "result.json").read_text())
        assert result["resumed_at_epoch"] >= 1


def test_killing_the_parent_of_workers_leaves_no_orphan(tmp_path):
    out = tmp_path / "workers"
    process = start(out, "--workers", "2")
    line = process.stdout.readline()
    assert line.startswith("started 2 workers"), line
    pids = [int(p) for p in line.split("pids ")[1].rstrip(")\n").split(", ")]
    time.sleep(1.0)  # the workers are importing or training
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.1)
    assert not alive, f"orphan workers {alive} still run after their parent was killed"
    assert main(["protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]) == 0  # and the rerun finishes the job
    assert len({row_key(r) for r in rows_of(out)}) == len(rows_of(out)) == 5


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # not our child (the parent's), so this raises; a zombie would be reaped
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def diverging(monkeypatch):
    """Runs with lr >= 0.04 produce a NaN loss at their second epoch (the linear grid is 0.01 and 0.05)."""
    step = ClassificationModule._step

    def nan_at_epoch_1(self, batch, stage, metric):
        loss = step(self, batch, stage, metric)
        return loss * float("nan") if stage == "train" and self.hparams.lr >= 0.04 and self.current_epoch else loss

    monkeypatch.setattr(ClassificationModule, "_step", nan_at_epoch_1)


def test_a_diverged_grid_point_is_recorded_and_never_selected(diverging, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert main(["protocol", *ONE_UNIT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = rows_of(out)
    diverged = [r for r in rows if r["state"] == "diverged"]
    assert len(diverged) == 2 and {r["lr"] for r in diverged} == {"0.05"}
    assert all(r["top1"] == "" and r["reason"] == "non-finite loss at epoch 1, step 4" for r in diverged)
    assert printed.count("diverged (non-finite loss at epoch 1, step 4)") == 2
    final = next(r for r in rows if r["stage"] == "final")
    assert final["lr"] == "0.01" and final["state"] == "finished"
    result = json.loads((out / diverged[0]["run_dir"] / "result.json").read_text())
    assert result["row"]["state"] == "diverged" and result["row"]["epochs"] == 2
    assert not (out / diverged[0]["run_dir"] / "checkpoints").exists()
    selection = json.loads(next((out / "runs").rglob("selection.json")).read_text())
    assert selection["selected"]["lr"] == 0.01
    assert selection["search"]["lr=0.05 wd=0"] == "diverged: non-finite loss at epoch 1, step 4"
    # a rerun trains nothing again: the diverged points are results
    assert main(["protocol", *ONE_UNIT, "--out", str(out)]) == 0
    assert rows_of(out) == rows


def test_a_unit_whose_every_grid_point_diverges_fails_with_a_message(diverging, tmp_path, capsys):
    out = tmp_path / "all"
    grid = ["--set", "model.lr=0.05"]  # refused: the grid sets it; a preset of one's own narrows the grid instead
    assert main(["protocol", *ONE_UNIT, "--out", str(out), *grid]) == 2
    preset = tmp_path / "narrow.yaml"
    preset.write_text(
        f"base: {CONFIGS / 'protocol' / 'smoke.yaml'}\nname: narrow\nmethods:\n  linear:\n"
        f"    config: {CONFIGS / 'method' / 'linear.yaml'}\n    lr: [0.05, 0.1]\n    weight_decay: [0.0]\n"
    )
    command = ["protocol", "--config", str(preset), "--no-progress", "--poll", "0.2", "--out", str(out)]
    assert main([*command, "--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]) == 1
    printed = capsys.readouterr().out
    assert "failed: vtab-1k/synthetic_shape linear seed 0: ValueError: every grid point diverged" in printed
    assert "lr=0.1 wd=0: non-finite loss at epoch 1" in printed
    assert [r["state"] for r in rows_of(out)] == ["diverged", "diverged"]


def test_fit_exits_non_zero_with_one_line_when_training_diverges(diverging, tmp_path, capsys):
    root = tmp_path / "data"
    write_synthetic(root, "shape", {"train800": 32, "val200": 16, "test": 16}, size=32)
    args = ["fit", "--config", str(CONFIGS / "fit" / "smoke.yaml"), "--data.dataset", "vtab-1k/synthetic_shape"]
    args += ["--data.root", str(root), "--data.manifest", str(root / "synthetic_shape" / "manifest.yaml")]
    args += ["--model.lr", "0.05", "--trainer.default_root_dir", str(tmp_path / "fit"), "--trainer.max_epochs", "3"]
    args += ["--trainer.enable_progress_bar", "false"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "wegeft-vision fit: training diverged: non-finite loss at epoch 1, step 3"


def test_one_broken_task_does_not_sink_the_others(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic(data, "shape", {"train800": 48, "val200": 24, "test": 32}, size=32)
    write_synthetic(data, "count", {"train800": 48, "val200": 24, "test": 32}, size=32)
    (data / "synthetic_count" / "test.txt").unlink()  # broken before the start: its split file is gone
    broken_image = next((data / "synthetic_shape").rglob("*.png"))
    out = tmp_path / "out"
    tasks = ["--tasks", "vtab-1k/synthetic_shape", "vtab-1k/synthetic_count", "--methods", "linear"]
    options = ["protocol", *SMOKE, *tasks, "--data-root", str(data), "--out", str(out)]
    original = broken_image.read_bytes()
    broken_image.write_bytes(b"not an image")  # broken while running: the first run that reads it fails
    assert main(options) == 1
    printed = capsys.readouterr().out
    assert "failed: vtab-1k/synthetic_count: left out:" in printed and "test.txt" in printed
    assert f"cannot decode image {broken_image}" in printed
    assert "1 unit(s) failed and 1 task(s) were left out" in printed
    assert (out / "protocol.json").is_file()
    broken_image.write_bytes(original)  # repaired: the rerun does what is missing
    assert main(options) == 1  # synthetic_count is still left out
    assert [r["stage"] for r in rows_of(out)].count("final") == 1


def test_changed_split_files_are_not_served_stale_results(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, "shape", {"train800": 48, "val200": 24, "test": 32}, size=32)
    out = tmp_path / "out"
    options = ["protocol", *ONE_UNIT, "--data-root", str(data), "--out", str(out)]
    assert main(options) == 0
    first = rows_of(out)
    assert main(options) == 0 and rows_of(out) == first  # unchanged data: the results are reused
    test_list = data / "synthetic_shape" / "test.txt"
    lines = test_list.read_text().splitlines(keepends=True)
    test_list.write_text("".join(lines[16:] + lines[:16]))  # the same samples in another order: other split files
    assert main(options) == 0
    rows = rows_of(out)
    assert len(rows) == 10 and rows[:5] == first
    assert {r["fingerprint"] for r in rows[5:]}.isdisjoint({r["fingerprint"] for r in first})
    assert [r["top1"] for r in rows[5:]] == [r["top1"] for r in first]  # (the same samples, hence the same numbers)


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("mongodb://localhost/x", "--storage mongodb://localhost/x: not a storage URL"),
        ("not a url", "--storage not a url: not a storage URL"),
        ("journal:/no/such/folder/studies.log", "folder /no/such/folder of the journal file does not exist"),
    ],
)
def test_a_storage_url_that_cannot_work_is_refused_before_anything_is_written(tmp_path, capsys, storage, message):
    out = tmp_path / "out"
    assert main(["protocol", *ONE_UNIT, "--out", str(out), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_checkpoint_every_is_checked(tmp_path, capsys):
    assert main(["protocol", *ONE_UNIT, "--out", str(tmp_path / "o"), "--checkpoint-every", "0"]) == 2
    assert "--checkpoint-every should be at least 1, got 0" in capsys.readouterr().err


def test_sigterm_stops_a_local_run_cleanly_and_the_rerun_resumes(uninterrupted, tmp_path):
    """A scheduler's SIGTERM mid-final: exit 143 with a resume hint (not Ctrl-C's 130), the point given back, and the
    rerun resumes the final from its checkpoint to the uninterrupted result."""
    out = tmp_path / "terminated"
    command = [sys.executable, "-m", "wegeft_vision.cli", "protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and not final_checkpoints(out):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM; rerun the same command to resume" in stderr
    assert main(["protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]) == 0
    final = next(r for r in rows_of(out) if r["stage"] == "final")
    expected = next(r for r in rows_of(uninterrupted) if r["stage"] == "final")
    assert final["top1"] == expected["top1"]
    assert json.loads((out / final["run_dir"] / "result.json").read_text())["resumed_at_epoch"] >= 1
