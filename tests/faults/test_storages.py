"""Workers sharing a real database: two worker processes on one study, in PostgreSQL and in the journal file, one of
them killed mid-run (the full grid, none trained twice, none lost); a worker killed right after claiming a point,
before it recorded anything, does not stall the others; dead workers are released on either storage; a writer killed
while it holds the journal's lock leaves no lock behind."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from wegeft_vision.protocol.optuna_compat import _JournalFlock
from wegeft_vision.protocol.results import row_key
from wegeft_vision.protocol.search import GridStudy, open_storage

from .test_protocol_faults import rows_of

# one task, one method: a 2 x 2 grid and one final; a heartbeat whose grace (3 x 300 s) no test may wait for
OPTIONS = ["--config", "smoke", "--no-progress", "--poll", "0.5", "--heartbeat", "300"]
OPTIONS += ["--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]
GRID = 4
STALL = 240  # seconds: well under the heartbeat's grace period, with room for a loaded machine


@pytest.fixture(params=["postgresql", "journal"])
def storage_url(request, tmp_path) -> str:
    if request.param == "journal":
        (tmp_path / "shared").mkdir()
        return f"journal:{tmp_path / 'shared' / 'studies.log'}"
    return request.getfixturevalue("postgres_url")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "wegeft_vision.cli", *args]


def search_trials(storage: BaseStorage) -> list[FrozenTrial]:
    """The trials of the one search study in `storage`."""
    studies = [s for s in storage.get_all_studies() if "/search@" in s.study_name]
    assert len(studies) <= 1
    return storage.get_all_trials(studies[0]._study_id) if studies else []


def _point(trial: FrozenTrial) -> tuple[float, float]:
    params = trial.system_attrs.get("fixed_params") or trial.params
    return params["lr"], params["weight_decay"]


def _run_dir(out: Path, trial: FrozenTrial) -> Path:
    lr, wd = _point(trial)
    return out / "runs" / "vtab-1k" / "synthetic_shape" / "linear" / "seed0" / "search" / f"lr{lr:g}_wd{wd:g}"


CLAIM_AND_DIE = """
import os, signal, sys
import optuna
from wegeft_vision.cli import main
# the objective first asks for the trial's params: die there, the point claimed (RUNNING) and nothing recorded yet
optuna.Trial.suggest_categorical = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
main(sys.argv[1:])
"""


def _kill_a_worker_mid_run(out: Path, storage: BaseStorage, workers: list[subprocess.Popen]) -> tuple[int, int, float]:
    """SIGKILL the worker of a RUNNING grid point whose first epoch is checkpointed; the trial's number, the worker's
    pid, the time."""
    deadline = time.monotonic() + STALL
    while all(w.poll() is None for w in workers) and time.monotonic() < deadline:
        for trial in search_trials(storage):
            worker = trial.system_attrs.get("worker") or trial.user_attrs.get("worker")
            if trial.state == TrialState.RUNNING and worker and len(trial.params) == 2:
                if (_run_dir(out, trial) / "checkpoints" / "last.ckpt").is_file():
                    pid = int(worker.rpartition(":")[2])
                    os.kill(pid, signal.SIGKILL)  # a zombie until the test reaps it: still dead to the survivor
                    return trial.number, pid, time.time()
        time.sleep(0.02)
    raise AssertionError("no worker was caught mid-run")


@pytest.mark.slow
def test_workers_killed_after_claiming_and_mid_run_leave_the_grid_trained_once(storage_url, tmp_path):
    out, log = tmp_path / "out", tmp_path / "workers.log"
    # a worker killed right after it claimed a point, before it could record anything of its own
    options = ["protocol", *OPTIONS, "--out", str(out), "--storage", storage_url]
    claimer = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, *options], capture_output=True, timeout=STALL)
    assert claimer.returncode == -signal.SIGKILL, claimer.stderr.decode()[-2000:]
    storage = open_storage(storage_url, out)
    (claimed,) = search_trials(storage)
    assert claimed.state == TrialState.RUNNING and not claimed.params and not claimed.user_attrs

    # two workers on the study (as on two machines, one CPU thread each); one of them killed in the middle of a run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        workers = [subprocess.Popen(_command(*options), stdout=handle, stderr=subprocess.STDOUT, env=env) for _ in "ab"]
    try:
        dead, pid, killed_at = _kill_a_worker_mid_run(out, storage, workers)
        # the survivor redoes both points (the killed one from its checkpoint) and finishes: no wait for a heartbeat
        (survivor,) = (w for w in workers if w.pid != pid)
        assert survivor.wait(timeout=STALL) == 0, log.read_text()[-3000:]
    finally:
        for worker in workers:  # a failed test leaves none running
            worker.kill()
            worker.wait()

    trials = search_trials(storage)
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trained) == len({_point(t) for t in trained}) == GRID
    assert sorted(t.number for t in trials if t.state == TrialState.FAIL) == [claimed.number, dead]
    assert all("duplicate_of" in t.user_attrs for t in trials if t.state == TrialState.PRUNED)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows = rows_of(out)
    assert sorted(r["stage"] for r in rows) == ["final"] + ["search"] * GRID
    assert len({row_key(r) for r in rows}) == len(rows)
    for trial in trained:  # one finished run folder per point
        assert (_run_dir(out, trial) / "result.json").is_file() and not (_run_dir(out, trial) / "checkpoints").exists()
    redone = _run_dir(out, trials[dead]) / "result.json"  # resumed, not from scratch (or finished just before the kill)
    assert json.loads(redone.read_text())["resumed_at_epoch"] or redone.stat().st_mtime < killed_at


POINTS = [(0.1, 0.0), (0.1, 1e-4), (0.01, 0.0), (0.01, 1e-4)]


def _claim(storage: BaseStorage, study: GridStudy, system_attrs: dict, started: datetime, index: int = 0) -> int:
    """A RUNNING trial on a point of the grid, as another worker would have left it."""
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=started,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={"fixed_params": {"lr": POINTS[index][0], "weight_decay": POINTS[index][1]}, **system_attrs},
        intermediate_values={},
        trial_id=-1,
    )
    return storage.create_new_trial(study.study._study_id, template)


def test_a_trial_that_names_no_worker_is_released_after_a_short_grace(tmp_path):
    journal = str(tmp_path / "studies.log")
    study = GridStudy(open_storage(f"journal:{journal}", tmp_path), "study", POINTS)
    plain = JournalStorage(JournalFileBackend(journal))  # another tool: records no worker
    now = datetime.now()
    old = plain.get_trial(_claim(plain, study, {}, now - timedelta(minutes=1), index=0)).number
    fresh = plain.get_trial(_claim(plain, study, {}, now, index=1)).number
    assert study.release_dead_workers() == [old]
    assert study.states()[POINTS[0]] == "waiting"  # enqueued again
    assert [t.number for t in study.trials() if t.state == TrialState.RUNNING] == [fresh]


def test_the_journal_releases_a_worker_on_another_host_whose_heartbeat_stopped(tmp_path):
    storage = open_storage(f"journal:{tmp_path / 'studies.log'}", tmp_path, heartbeat=60)
    study = GridStudy(storage, "study", POINTS)
    beat = time.time()
    alive = _claim(storage, study, {"worker": "elsewhere:1", "heartbeat": beat - 100}, datetime.now(), index=1)
    silent = _claim(storage, study, {"worker": "elsewhere:2", "heartbeat": beat - 200}, datetime.now(), index=0)
    study.release_dead_workers()
    assert storage.get_trial(alive).state == TrialState.RUNNING
    assert storage.get_trial(silent).state == TrialState.FAIL
    waiting = [t for t in study.trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry": True}


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="zombies are told apart through Linux's /proc")
def test_a_killed_worker_its_parent_has_not_reaped_yet_is_dead(tmp_path):
    study = GridStudy(open_storage(f"journal:{tmp_path / 'studies.log'}", tmp_path), "study", POINTS)
    worker = subprocess.Popen(["sleep", "60"])
    worker.kill()
    os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie: `kill -0` still finds it
    try:
        storage = study.study._storage
        claimed = _claim(storage, study, {"worker": f"{socket.gethostname()}:{worker.pid}"}, datetime.now())
        assert study.release_dead_workers() == [storage.get_trial(claimed).number]
    finally:
        worker.wait()


def _locked(path: Path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_a_writer_killed_while_it_holds_the_journal_lock_leaves_no_lock_behind(tmp_path):
    journal = tmp_path / "studies.log"
    hold = "import sys, time; from wegeft_vision.protocol.optuna_compat import _JournalFlock as F"
    hold += "; lock = F(sys.argv[1]); lock.acquire()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold + "; print(1, flush=True); time.sleep(120)", str(journal)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "1\n"
        assert _locked(Path(_JournalFlock(str(journal)).path))
    finally:
        holder.kill()
        holder.wait()
    storage = open_storage(f"journal:{journal}", tmp_path)
    study = GridStudy(storage, "study", POINTS)  # writes at once: no grace period to wait out
    claimed = _claim(storage, study, {}, datetime.now())
    assert [t._trial_id for t in study.trials()] == [claimed]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["studies.log", "studies.log.flock"]  # no Optuna lock files


def test_the_journal_lock_excludes_the_threads_of_one_process(tmp_path):
    lock, order = _JournalFlock(str(tmp_path / "studies.log")), []
    lock.acquire()

    def second() -> None:
        lock.acquire()
        order.append("second")
        lock.release()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    order.append("first")  # the second thread is still waiting
    lock.release()
    thread.join(timeout=30)
    assert order == ["first", "second"] and not _locked(Path(lock.path))
