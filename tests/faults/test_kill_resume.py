"""Faults: a real training process killed in the middle of its schedule resumes from its last epoch checkpoint, to the
very result of an uninterrupted run; its log and every file written before the kill stay intact."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import smoke_final_spec
from safetensors.torch import load_file

from wegeft_vision.data import write_synthetic
from wegeft_vision.protocol.runs import RunSpec, pack_dir, train_pack, train_run

EPOCHS = 6

# The child trains one run and pauses at the two moments a kill can fall between: after an epoch's checkpoint was
# written (not yet in place: the epoch's metrics are logged after it) and after it was put in place at the next
# epoch's start. The kill itself is a real SIGKILL of a real training process.
CHILD = """
import pickle, sys, time
from wegeft_vision.training import callbacks
from wegeft_vision.protocol.runs import train_run

Checkpoint = callbacks.EpochCheckpoint
end, start = Checkpoint.on_train_epoch_end, Checkpoint.on_train_epoch_start
def ended(self, trainer, module):
    end(self, trainer, module)
    print("written", trainer.current_epoch, flush=True)
    time.sleep(0.5)
def started(self, trainer, module):
    start(self, trainer, module)
    print("started", trainer.current_epoch, flush=True)
    time.sleep(0.5)
Checkpoint.on_train_epoch_end, Checkpoint.on_train_epoch_start = ended, started
spec, out = pickle.loads(bytes.fromhex(sys.argv[1]))
train_run(spec, out)
"""


@pytest.fixture(scope="module")
def task_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, "shape", {"train800": 48, "val200": 16, "test": 24}, size=32)
    return root


def final_spec(root: Path, **overrides) -> RunSpec:
    schedule = {"model.epochs": EPOCHS, "trainer.max_epochs": EPOCHS, "model.warmup_epochs": 1}
    return smoke_final_spec(root, overrides={**schedule, **overrides})


@pytest.fixture(scope="module")
def whole(task_root, tmp_path_factory) -> tuple[dict, dict]:
    """The uninterrupted run: its row and its adapter tensors."""
    spec, out = final_spec(task_root), tmp_path_factory.mktemp("whole")
    row = train_run(spec, out)
    return row, load_file(spec.run_dir(out) / "adapter.safetensors")


def kill_at(spec: RunSpec | list[RunSpec], out: Path, moment: str, code: str = CHILD) -> None:
    """Start the run (`code`: the child training `spec`) in a child process and SIGKILL it at `moment`: `written N`
    (the checkpoint of epoch N, 0-based, written but not in place) or `started N` (epoch N started, the checkpoint of
    epoch N - 1 in place)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, pickle.dumps((spec, out)).hex()],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in child.stdout:
            if line.strip() == moment:
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=120)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def logged_epochs(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.csv").is_file():
        return []
    with (run_dir / "metrics.csv").open() as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("train/loss")]


@pytest.mark.parametrize(("moment", "resume_epoch"), [("started 3", 3), ("written 3", 3), ("written 0", 0)])
def test_a_killed_run_resumes_from_its_epoch_to_the_uninterrupted_result(
    task_root, whole, tmp_path, moment, resume_epoch
):
    spec = final_spec(task_root)

    killed = tmp_path / "killed"
    kill_at(spec, killed, moment)
    run_dir = spec.run_dir(killed)
    if resume_epoch:
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == resume_epoch - 1
    else:
        assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    logged = logged_epochs(run_dir)  # the log was written as the run went, and survives the kill
    assert logged[:resume_epoch] == list(range(resume_epoch)) and len(logged) <= resume_epoch + 1
    assert not (run_dir / "result.json").exists()

    resumed = train_run(spec, killed)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_at_epoch"] == (resume_epoch or None)  # from the killed run's last epoch, not from 0
    assert resumed["top1"] == whole[0]["top1"] and resumed["epochs"] == EPOCHS
    a, b = whole[1], load_file(run_dir / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_epochs(run_dir) == list(range(EPOCHS))  # every epoch once, those before the kill first
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.earlier.csv").exists()


def test_a_run_killed_twice_keeps_the_log_of_both_attempts(task_root, tmp_path):
    spec = final_spec(task_root)
    out = tmp_path / "twice"
    kill_at(spec, out, "started 2")
    kill_at(spec, out, "started 4")
    run_dir = spec.run_dir(out)
    with (run_dir / "metrics.earlier.csv").open() as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("train/loss")] == [0, 1]
    assert logged_epochs(run_dir) == [2, 3]
    train_run(spec, out)
    assert logged_epochs(run_dir) == list(range(EPOCHS))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_on_cuda_a_killed_run_resumes_to_the_uninterrupted_result(task_root, tmp_path, precision):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    spec = final_spec(task_root, **{"trainer.accelerator": "gpu", "trainer.precision": precision})
    whole = train_run(spec, tmp_path / "whole")
    kill_at(spec, tmp_path / "killed", "started 3")
    resumed = train_run(spec, tmp_path / "killed")
    assert json.loads((spec.run_dir(tmp_path / "killed") / "result.json").read_text())["resumed_at_epoch"] == 3
    a = load_file(spec.run_dir(tmp_path / "whole") / "adapter.safetensors")
    b = load_file(spec.run_dir(tmp_path / "killed") / "adapter.safetensors")
    assert resumed["top1"] == whole["top1"] and all(torch.equal(a[k], b[k]) for k in a)


PACK_CHILD = CHILD.replace("train_run(spec, out)", "train_pack(spec, out)").replace(
    "import train_run", "import train_pack"
)


def test_a_killed_pack_resumes_with_all_its_points_to_the_separate_runs_results(task_root, tmp_path):
    """Three search points packed, SIGKILLed after the checkpoint of epoch 2 is in place: the resumed pack gives each
    point the row (validation top-1 of every epoch, best epoch) of its own uninterrupted run, from epoch 3."""
    schedule = {"model.epochs": EPOCHS, "trainer.max_epochs": EPOCHS, "model.warmup_epochs": 1}
    specs = [
        smoke_final_spec(task_root, stage="search", lr=lr, weight_decay=wd, overrides=schedule)
        for lr, wd in ((1e-3, 1e-4), (5e-3, 0.0), (2e-2, 1e-4))
    ]
    killed = tmp_path / "killed"
    kill_at(specs, killed, "started 3", code=PACK_CHILD)
    folder = pack_dir(specs, killed)
    assert (folder / "checkpoints" / "last.ckpt").is_file() and not (specs[0].run_dir(killed) / "result.json").exists()
    resumed = train_pack(specs, killed)
    for spec, row in zip(specs, resumed, strict=True):
        alone = train_run(spec, tmp_path / "alone")
        assert (row["top1"], row["best_top1"], row["best_epoch"]) == (
            alone["top1"],
            alone["best_top1"],
            alone["best_epoch"],
        )
        assert json.loads((spec.run_dir(killed) / "result.json").read_text())["resumed_at_epoch"] == 3
        assert row["pack"] == 3 and row["run_dir"] == str(spec.run_dir(killed).relative_to(killed))
        epochs = [
            int(r["epoch"]) for r in csv.DictReader((spec.run_dir(killed) / "metrics.csv").open()) if r.get("val/acc")
        ]
        assert epochs == list(range(EPOCHS))
    assert not (folder / "checkpoints").exists()
