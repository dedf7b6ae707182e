"""`protocol/optuna_compat.py`, the one module that uses Optuna's private API: each test fails when an Optuna changes
what it relies on, on every storage (SQLite, the journal file, PostgreSQL: here beside the throwaway server's fixture).
Run them before widening the supported range in `optuna_compat.SUPPORTED` and pyproject.toml."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.samplers import GridSampler
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from wegeft_vision.protocol import optuna_compat as compat
from wegeft_vision.protocol.search import GridStudy, open_storage

GRID = [(0.1, 0.0), (0.01, 0.0), (0.001, 0.0)]  # three points: the second one is the second-to-last
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
NAMES = ("optuna", *compat.NOTICE_LOGGERS)


def _train(point: tuple[float, float]) -> dict:
    return {"lr": point[0], "weight_decay": point[1], "top1": 50.0}


def _interrupted(point: tuple[float, float]) -> dict:
    raise KeyboardInterrupt  # Ctrl-C in the middle of the run


def _dead_worker() -> str:
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{socket.gethostname()}:{process.pid}"


def test_the_private_optuna_api_the_shim_uses_is_there():
    assert list(inspect.signature(RDBStorage._create_new_trial).parameters) == ["self", "study_id", "template_trial"]
    assert "_get_stale_trial_ids" in BaseHeartbeat.__abstractmethods__  # what `fail_stale_trials` asks the storage
    sampler = GridSampler({"weight_decay": [0.0, 1e-4], "lr": [0.1]}, seed=3)
    assert sampler._param_names == ["lr", "weight_decay"]
    assert sampler._search_space == {"lr": [0.1], "weight_decay": [0.0, 1e-4]}
    assert sorted(sampler._all_grids) == [(0.1, 0.0), (0.1, 1e-4)]  # one tuple per point, in `_param_names` order
    for name in compat.NOTICE_LOGGERS:  # the loggers are named after these modules
        importlib.import_module(name)


def test_an_optuna_outside_the_supported_range_is_refused_when_a_storage_is_opened(monkeypatch, tmp_path):
    declared = re.search(r'"optuna([^"]*)"', PYPROJECT.read_text())
    assert declared and declared[1] == compat.supported_range() == ">=4.3,<5.1"  # one range, declared and checked
    for version in ("4.3.0", "4.9.0", "5.0.0", "5.0.1", optuna.__version__):
        compat.check_version(version)
    for version in ("4.2.1", "5.1.0", "6.0.0.dev0"):
        monkeypatch.setattr(optuna, "__version__", version)
        with pytest.raises(ValueError, match=rf"optuna {re.escape(version)} is installed; .* optuna>=4\.3,<5\.1"):
            open_storage(None, tmp_path)
    assert not (tmp_path / "optuna.db").exists()


def test_nothing_is_configured_at_import_and_notices_are_filtered_once_a_storage_is_opened(tmp_path):
    probe = (
        "import logging, optuna; "
        f"state = lambda: [(logging.getLogger(n).level, logging.getLogger(n).filters) for n in {NAMES!r}]; "
        "before = state(); import wegeft_vision.protocol.search; print(state() == before)"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert imported.stdout.strip() == "True", imported.stderr[-2000:]

    open_storage(None, tmp_path)
    storage = open_storage(None, tmp_path)  # once, however many storages are opened
    assert [len(logging.getLogger(name).filters) for name in compat.NOTICE_LOGGERS] == [1, 1]
    assert logging.getLogger("optuna").level == logging.WARNING
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        study = optuna.create_study(storage=storage, sampler=GridSampler({"x": [1.0]}))
        for _ in range(2):  # the second trial re-evaluates the grid's only point
            study.optimize(lambda trial: trial.suggest_float("x", 0, 2) / 0, n_trials=1, catch=(ZeroDivisionError,))
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_a_claimed_trial_names_its_worker_from_its_first_write(study_storage_url, tmp_path):
    storage = open_storage(study_storage_url, tmp_path)
    study = GridStudy(storage, "study", GRID)
    created = study.study._storage.create_new_trial(study.study._study_id)  # what `ask` does; the only write yet
    recorded = storage.get_trial(created).system_attrs
    assert recorded["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert ("heartbeat" in recorded) == (study_storage_url is not None and study_storage_url.startswith("journal:"))
    study.study.enqueue_trial({"lr": GRID[1][0], "weight_decay": GRID[1][1]})
    with warnings.catch_warnings():  # Optuna notes that heartbeats are for `optimize`
        warnings.simplefilter("ignore")
        popped = study.study.ask()  # an enqueued trial, taken by this worker
    assert storage.get_trial(popped._trial_id).system_attrs["worker"] == recorded["worker"]


def test_a_trial_whose_heartbeat_stopped_is_failed_and_its_point_enqueued_with_its_grid_id(study_storage_url, tmp_path):
    storage = open_storage(study_storage_url, tmp_path, heartbeat=1)
    study = GridStudy(storage, "study", GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.study.ask()  # claimed by a live worker (this one) that never asked for its params
    if isinstance(storage, JournalStorage):
        storage.set_trial_system_attr(trial._trial_id, "heartbeat", time.time() - 10)  # its last beat, long ago
    else:
        storage.record_heartbeat(trial._trial_id)
        storage.grace_period = 0  # stale as soon as the database's clock moves on
    deadline = time.monotonic() + 30
    while storage.get_trial(trial._trial_id).state == TrialState.RUNNING and time.monotonic() < deadline:
        assert study.release_dead_workers() == []  # its worker lives: only the heartbeat fails it
        time.sleep(0.1)
    failed = storage.get_trial(trial._trial_id)
    assert failed.state == TrialState.FAIL and not failed.params
    (waiting,) = [t for t in study.trials() if t.state == TrialState.WAITING]
    grid_id = failed.system_attrs["grid_id"]
    point = study.study.sampler._all_grids[grid_id]
    assert waiting.system_attrs["fixed_params"] == {"lr": point[0], "weight_decay": point[1]}
    assert waiting.system_attrs["grid_id"] == grid_id and waiting.user_attrs == {"retry": True}


@pytest.mark.parametrize("stop", ["interrupted", "killed"])
def test_a_search_stopped_on_its_second_to_last_point_finishes_in_one_more_run(study_storage_url, tmp_path, stop):
    study = GridStudy(open_storage(study_storage_url, tmp_path), "study", GRID)
    rows: list[dict] = []
    assert study.run_one(_train, rows.append)
    if stop == "interrupted":  # the trial is failed on the way out
        with pytest.raises(KeyboardInterrupt):
            study.run_one(_interrupted, rows.append)
    else:  # left RUNNING, naming a process that is gone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.study.ask()
        trial.suggest_categorical("lr", study.lrs)
        trial.suggest_categorical("weight_decay", study.wds)
        study.study._storage.set_trial_system_attr(trial._trial_id, "worker", _dead_worker())

    rerun = GridStudy(open_storage(study_storage_url, tmp_path), "study", GRID)  # the command, run again
    assert len(rerun.release_dead_workers()) == (stop == "killed")
    assert len(rerun.retry_failed()) == (stop == "interrupted")
    while rerun.run_one(_train, rows.append):  # GridSampler's `after_trial` raised KeyError: 'grid_id' here
        pass
    assert rerun.states() == {point: "complete" for point in GRID}
    assert sorted((r["lr"], r["weight_decay"]) for r in rows) == sorted(GRID)  # each point trained once
    assert [t.state for t in rerun.trials()].count(TrialState.COMPLETE) == len(GRID)


def test_a_point_enqueued_without_its_grid_id_by_an_earlier_version_is_mended_when_the_study_opens(
    study_storage_url, tmp_path
):
    study = GridStudy(open_storage(study_storage_url, tmp_path), "study", GRID)
    rows: list[dict] = []
    assert study.run_one(_train, rows.append) and study.run_one(_train, rows.append)
    (left,) = [p for p, state in study.states().items() if state == "new"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.study.enqueue_trial({"lr": left[0], "weight_decay": left[1]})  # as versions before the fix did
    (waiting,) = study.study.get_trials(states=(TrialState.WAITING,))
    assert "grid_id" not in waiting.system_attrs
    rerun = GridStudy(open_storage(study_storage_url, tmp_path), "study", GRID)
    (waiting,) = rerun.study.get_trials(states=(TrialState.WAITING,))
    assert rerun.study.sampler._all_grids[waiting.system_attrs["grid_id"]] == left
    while rerun.run_one(_train, rows.append):  # without the grid id: KeyError: 'grid_id' in GridSampler.after_trial
        pass
    assert rerun.states() == {point: "complete" for point in GRID}
    assert sorted((r["lr"], r["weight_decay"]) for r in rows) == sorted(GRID)
