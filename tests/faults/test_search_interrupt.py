"""Faults: `protocol` interrupted (Ctrl-C, or killed) while the second-to-last point of its grid trains finishes on the
first rerun, every point trained once, on every study storage. The rerun used to end `KeyError: 'grid_id'`: the point
enqueued again carried no grid id, which Optuna's GridSampler reads once a single point is left unvisited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from wegeft_vision.cli import main
from wegeft_vision.protocol.preset import CONFIG_DIR as CONFIGS
from wegeft_vision.protocol.results import row_key
from wegeft_vision.protocol.search import open_storage

from .test_protocol_faults import kill_when, rows_of
from .test_storages import search_trials

LRS = ["0.01", "0.03", "0.05"]  # one task, one method, three points: the second one trained is the second-to-last


def _preset(folder: Path) -> Path:
    preset = folder / "three.yaml"
    preset.write_text(
        f"base: {CONFIGS / 'protocol' / 'smoke.yaml'}\nname: three\nsearch_epochs: 3\nmethods:\n  linear:\n"
        f"    config: {CONFIGS / 'method' / 'linear.yaml'}\n    lr: [{', '.join(LRS)}]\n    weight_decay: [0.0]\n"
    )
    return preset


def _second_point_mid_run(out: Path) -> bool:
    """The first point done, the second past its first epoch (its checkpoint written), the third not started."""
    return len(rows_of(out)) == 1 and any((out / "runs").glob("*/*/*/seed0/search/*/checkpoints/last.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_a_search_interrupted_on_its_second_to_last_point_finishes_on_the_first_rerun(study_storage_url, tmp_path, sig):
    out = tmp_path / "out"
    command = ["protocol", "--config", str(_preset(tmp_path)), "--no-progress", "--poll", "0.2", "--out", str(out)]
    command += ["--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]
    command += ["--storage", study_storage_url] if study_storage_url else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "first.log").open("w") as log:
        cli = [sys.executable, "-m", "wegeft_vision.cli", *command]
        process = subprocess.Popen(cli, stdout=log, stderr=log, env=env)
    kill_when(process, lambda: _second_point_mid_run(out), sig=sig)
    expected = 130 if sig == signal.SIGINT else -signal.SIGKILL  # 130: "interrupted; rerun the same command"
    assert process.returncode == expected, (tmp_path / "first.log").read_text()[-3000:]
    (first,) = rows_of(out)
    first_done = os.stat(out / first["run_dir"] / "result.json").st_mtime_ns

    assert main(command) == 0  # the first rerun
    rows = rows_of(out)
    assert [r["stage"] for r in rows] == ["search"] * 3 + ["final"] and rows[0] == first
    assert sorted(r["lr"] for r in rows[:3]) == LRS and len({row_key(r) for r in rows}) == 4
    assert os.stat(out / first["run_dir"] / "result.json").st_mtime_ns == first_done  # not trained again
    trials = search_trials(open_storage(study_storage_url, out))
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    (failed,) = (t for t in trials if t.state == TrialState.FAIL)
    (retried,) = (t for t in trials if t.user_attrs.get("retry"))
    assert retried.state == TrialState.COMPLETE and retried.params == failed.params
    (redone,) = (r for r in rows if r["stage"] == "search" and float(r["lr"]) == failed.params["lr"])
    assert json.loads((out / redone["run_dir"] / "result.json").read_text())["resumed_at_epoch"] >= 1
