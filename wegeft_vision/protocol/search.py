"""The grid search on Optuna: one study per (benchmark, task, method, seed, stage), shared by any number of workers.

Optuna stores every trial (params, state, value, the results row as a user attribute) in an embedded SQLite file or
any storage URL, so workers on several GPUs or machines pull grid points from one study. `GridSampler` hands out the
grid; this module adds what the protocol needs on top:

- idempotence: a grid point with a COMPLETE trial is never trained again; a point whose trials all FAILED (an error,
  or an interrupted worker) is enqueued once more when a worker starts;
- divergence: a run whose loss or parameters became non-finite is a result, not an error: its trial is PRUNED with
  the reason as user attribute `diverged`; it is never retried and never selected;
- no duplicates: a worker that draws a point another live worker started earlier (a race after the first pass over
  the grid) prunes its trial without training (user attribute `duplicate_of`);
- dead workers: a trial names its worker (`host:pid`) from its first write; a RUNNING trial whose worker process is
  gone (same host), or that names none a while after it started, is failed at once and its point enqueued again; on
  another host, the heartbeat (RDB storages; the journal file through a system attribute) fails it after three beats.

What this needs of Optuna beyond its public API lives in `optuna_compat`.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from ..files import exclusive_lock
from . import optuna_compat as compat
from . import preemption

Point = tuple[float, float]
WORKER = f"{socket.gethostname()}:{os.getpid()}"
UNRECORDED_GRACE = 30.0  # seconds after which a RUNNING trial that names no worker is taken for dead


def open_storage(url: str | None, out: Path, heartbeat: int = 60) -> BaseStorage:
    """The storage of the protocol's studies: a claimed trial names its worker (system attribute `worker`) from its
    first write, and a trial failed for a stopped heartbeat has its point enqueued again.

    Args:
        url: None for `sqlite:///OUT/optuna.db` (embedded, no server); an RDB URL (`postgresql://...`,
            `mysql+pymysql://...`, `sqlite:///...`); or `journal:PATH` for Optuna's journal file (NFS-friendly).
        out: the run folder.
        heartbeat: seconds between heartbeats of a running trial; a trial silent for three heartbeats is failed and
            redone.

    Raises:
        ValueError: the installed Optuna is outside the supported range.
    """
    compat.prepare()
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{out.resolve() / 'optuna.db'}"
    hooks: dict[str, Any] = {"attrs": {"worker": WORKER}, "on_stale": _enqueue_again}
    if url.startswith("journal:"):
        return compat.journal_storage(str(Path(url.removeprefix("journal:")).expanduser()), heartbeat, **hooks)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return compat.rdb_storage(url, heartbeat, engine_kwargs=engine, **hooks)
        except SQLAlchemyError:  # workers racing to create the schema of a new database: the loser retries
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _point(trial: FrozenTrial) -> Point | None:
    params = compat.trial_params(trial)
    return (params["lr"], params["weight_decay"]) if "lr" in params and "weight_decay" in params else None


def _enqueue(study: optuna.Study, point: Point) -> None:
    compat.enqueue(study, {"lr": point[0], "weight_decay": point[1]}, user_attrs={"retry": True})


def _enqueue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the point of a trial failed because its worker is gone (also the storages' callback for a stopped
    heartbeat), so that the live workers redo it, from its last checkpoint, without waiting for a restart."""
    params = compat.claimed_params(study, trial)
    if {"lr", "weight_decay"} <= set(params) and "duplicate_of" not in trial.user_attrs:
        _enqueue(study, (params["lr"], params["weight_decay"]))


def _worker_alive(worker: str) -> bool:
    """False only for a worker `host:pid` of this host whose process no longer exists or is a zombie (killed, not yet
    reaped by its parent, e.g. a `--workers` parent still waiting for another worker)."""
    host, _, pid = worker.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state follows the parenthesized command name
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _worker_gone(trial: FrozenTrial, now: datetime) -> bool:
    """Whether a RUNNING trial's worker is gone: its process (this host) no longer exists, or the trial names no
    worker `UNRECORDED_GRACE` seconds after it started (its worker died between taking an enqueued trial and recording
    itself, or the trial was claimed by a tool that records none)."""
    worker = trial.system_attrs.get("worker") or trial.user_attrs.get("worker")
    if worker is None:
        started = trial.datetime_start or now
        return (now - started).total_seconds() > UNRECORDED_GRACE
    return not _worker_alive(worker)


class GridStudy:
    """The lr x weight-decay grid of one study.

    Args:
        storage: from `open_storage`.
        name: the study's name (unique per benchmark, task, method, seed, stage and protocol fingerprint).
        points: the grid (lr, weight decay) in selection tie-break order.
        seed: seed of the sampler's choice among free points.
        score: a finished run's objective from its results row (default: its `top1`).
    """

    def __init__(
        self,
        storage: BaseStorage,
        name: str,
        points: Sequence[Point],
        seed: int = 0,
        score: Callable[[dict[str, Any]], float] | None = None,
    ) -> None:
        self.name = name
        self.score = score or (lambda row: float(row["top1"]))
        self.points = list(points)
        self.lrs = list(dict.fromkeys(lr for lr, _ in self.points))
        self.wds = list(dict.fromkeys(wd for _, wd in self.points))
        if len(self.points) != len(self.lrs) * len(self.wds):
            raise ValueError(f"study {name}: the points do not form an lr x weight-decay grid")
        sampler = GridSampler({"lr": self.lrs, "weight_decay": self.wds}, seed=seed)
        self.study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
        )
        compat.give_grid_ids(self.study)  # points enqueued by earlier versions: their rerun completes at once
        self._retried: set[Point] = set()

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def states(self) -> dict[Point, str]:
        """Per point: `complete`, `diverged` (its training became non-finite: done, never selected), `running`,
        `waiting` (enqueued), `failed` (only failed trials) or `new`."""
        seen: dict[Point, set[TrialState]] = {p: set() for p in self.points}
        diverged: set[Point] = set()
        for trial in self.trials():
            if (point := _point(trial)) in seen and "duplicate_of" not in trial.user_attrs:
                seen[point].add(trial.state)
                if trial.state == TrialState.PRUNED and "diverged" in trial.user_attrs:
                    diverged.add(point)
        states = {}
        for point, found in seen.items():
            if point in diverged and TrialState.COMPLETE not in found:
                states[point] = "diverged"
                continue
            for state, name in (
                (TrialState.COMPLETE, "complete"),
                (TrialState.RUNNING, "running"),
                (TrialState.WAITING, "waiting"),
                (TrialState.FAIL, "failed"),
            ):
                if state in found:
                    states[point] = name
                    break
            else:
                states[point] = "new"
        return states

    def release_dead_workers(self) -> list[int]:
        """Fail the RUNNING trials whose worker is gone and enqueue their points again; returns their numbers.

        Gone: a process of this host that no longer exists, or a trial that names no worker `UNRECORDED_GRACE` seconds
        after it started (see `_worker_gone`); on any host, a trial whose heartbeat stopped for three heartbeats
        (Optuna's `fail_stale_trials`; the storage's callback enqueues those, whichever worker fails them).
        """
        released = []
        now = datetime.now()
        for trial in self.trials():
            if trial.state == TrialState.RUNNING and _worker_gone(trial, now) and compat.fail_trial(self.study, trial):
                _enqueue_again(self.study, trial)
                released.append(trial.number)
        compat.fail_stale_trials(self.study)
        return released

    def retry_failed(self) -> list[Point]:
        """Enqueue one new trial for every point whose trials all failed (once per worker lifetime)."""
        retried = [p for p, s in self.states().items() if s == "failed" and p not in self._retried]
        for point in retried:
            _enqueue(self.study, point)
        self._retried.update(retried)
        return retried

    def has_free_point(self) -> bool:
        return any(s in ("new", "waiting") for s in self.states().values())

    def _superseded_by(self, trial: optuna.Trial, point: Point) -> int | None:
        mine = (trial.datetime_start, trial.number)
        for other in self.trials():
            if other.number == trial.number or _point(other) != point or "duplicate_of" in other.user_attrs:
                continue
            if other.state == TrialState.COMPLETE or "diverged" in other.user_attrs:
                return other.number
            if other.state == TrialState.RUNNING and (other.datetime_start, other.number) < mine:
                return other.number
        return None

    def run_one(self, train: Callable[[Point], dict[str, Any]], on_done: Callable[[dict[str, Any]], None]) -> bool:
        """Claim one free point and train it; False when no point is free.

        `train(point)` returns the results row (its `top1` is the objective); `on_done(row)` is called once the
        trial is COMPLETE in the storage. A training error fails the trial (recorded as `error`) and is re-raised. A
        worker stopped by its scheduler (`preemption`) fails the trial as `preempted` and enqueues its point again at
        once: a point given back, not a failure; it resumes from the run's last epoch checkpoint.
        """
        if not self.has_free_point():
            return False

        def objective(trial: optuna.Trial) -> float:
            point = (trial.suggest_categorical("lr", self.lrs), trial.suggest_categorical("weight_decay", self.wds))
            trial.set_user_attr("worker", WORKER)
            if (other := self._superseded_by(trial, point)) is not None:
                trial.set_user_attr("duplicate_of", other)
                raise optuna.TrialPruned(f"point {point} is trained by trial {other}")
            claimed.append(point)
            try:
                row = train(point)
            except (SystemExit, KeyboardInterrupt) as stop:
                if (name := preemption.received()) is not None:
                    trial.set_user_attr("preempted", name)
                if isinstance(stop, SystemExit):  # Lightning exits on Ctrl-C; let Optuna fail the trial
                    raise KeyboardInterrupt from stop
                raise
            except Exception as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
                raise
            trial.set_user_attr("result", row)
            if row.get("state") == "diverged":  # a result, not an error: never retried, never selected
                trial.set_user_attr("diverged", row["reason"])
                raise optuna.TrialPruned(f"point {point} diverged: {row['reason']}")
            return self.score(row)

        def completed(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE or "diverged" in trial.user_attrs:
                on_done(trial.user_attrs["result"])

        claimed: list[Point] = []
        try:
            self.study.optimize(objective, n_trials=1, callbacks=[completed])
        except KeyboardInterrupt:
            if claimed and preemption.received() is not None:  # stopped by the scheduler: the point goes back
                _enqueue(self.study, claimed[0])
            raise
        return True

    def run_pack(
        self,
        count: int,
        train: Callable[[list[Point]], list[dict[str, Any]]],
        on_done: Callable[[dict[str, Any]], None],
        claim_lock: Path | None = None,
    ) -> bool:
        """Claim up to `count` free points and train them together (`train(points)` returns one row per point, in
        order); False when no point is free. With `count` 1 this is `run_one`.

        Each point is a trial of its own, claimed in turn (waiting trials first: the points of a pack that was stopped
        come back together, in order) with its heartbeat; the trials finish as `run_one`'s do: COMPLETE with the
        score, PRUNED when the point diverged, FAIL on an error (recorded on each) or on preemption (each point
        enqueued again, in order). Workers that share `claim_lock` (a file in the run folder) claim in turns, so two
        workers starting together do not split a pack between them.
        """
        if count == 1:
            return self.run_one(lambda point: train([point])[0], on_done)
        with exclusive_lock(claim_lock) if claim_lock is not None else contextlib.nullcontext():
            trials, points = self._claim(count)
        if not points:
            return False
        try:
            with compat.heartbeats(self.study, trials):
                rows = train(points)
        except (SystemExit, KeyboardInterrupt):
            stopped_by = preemption.received()
            for trial in trials:
                if stopped_by is not None:
                    trial.set_user_attr("preempted", stopped_by)
                compat.finish_trial(self.study, trial, TrialState.FAIL)
            if stopped_by is not None:
                for point in points:
                    _enqueue(self.study, point)
            raise
        except Exception as error:
            for trial in trials:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
                compat.finish_trial(self.study, trial, TrialState.FAIL)
            raise
        for trial, row in zip(trials, rows, strict=True):
            trial.set_user_attr("result", row)
            if row.get("state") == "diverged":
                trial.set_user_attr("diverged", row["reason"])
                finished = compat.finish_trial(self.study, trial, TrialState.PRUNED)
            else:
                finished = compat.finish_trial(self.study, trial, TrialState.COMPLETE, self.score(row))
            if finished:
                on_done(row)
        return True

    def _claim(self, count: int) -> tuple[list[optuna.Trial], list[Point]]:
        """Up to `count` trials of free points, each claimed with `study.ask` (a duplicate draw is pruned)."""
        trials: list[optuna.Trial] = []
        points: list[Point] = []
        for _ in range(count + len(self.points)):  # a draw may be a duplicate; the grid bounds the draws
            if len(points) == count or not self.has_free_point():
                break
            trial = self.study.ask()
            point = (trial.suggest_categorical("lr", self.lrs), trial.suggest_categorical("weight_decay", self.wds))
            trial.set_user_attr("worker", WORKER)
            other = self._superseded_by(trial, point)
            if other is not None:
                trial.set_user_attr("duplicate_of", other)
                compat.finish_trial(self.study, trial, TrialState.PRUNED)
                continue
            trials.append(trial)
            points.append(point)
        return trials, points

    def results(self) -> list[dict[str, Any]]:
        """The results rows of the COMPLETE and diverged trials (one per point)."""
        rows = {}
        for trial in self.trials():
            done = trial.state == TrialState.COMPLETE or "diverged" in trial.user_attrs
            if done and "result" in trial.user_attrs:
                rows.setdefault(_point(trial), trial.user_attrs["result"])
        return list(rows.values())

    def errors(self) -> dict[Point, str]:
        """The last recorded error of each failed point."""
        states = self.states()
        out = {}
        for trial in self.trials():
            point = _point(trial)
            if point is not None and states.get(point) == "failed" and trial.state == TrialState.FAIL:
                out[point] = trial.user_attrs.get("error", "interrupted")
        return out

    def divergences(self) -> dict[Point, str]:
        """Why each diverged point diverged (e.g. `non-finite loss at epoch 3, step 41`)."""
        return {
            _point(t): t.user_attrs["diverged"]
            for t in self.trials()
            if "diverged" in t.user_attrs and "duplicate_of" not in t.user_attrs
        }

    def best(self) -> tuple[Point, float]:
        """The point with the highest value; ties go to the earlier point in grid order.

        Raises:
            ValueError: some point is not complete yet, or every point diverged.
        """
        values: dict[Point, float] = {}
        for trial in self.trials():
            if trial.state == TrialState.COMPLETE and "duplicate_of" not in trial.user_attrs:
                values.setdefault(_point(trial), trial.value)
        states = self.states()
        missing = [p for p in self.points if p not in values and states[p] != "diverged"]
        if missing:
            raise ValueError(f"study {self.name}: {len(missing)} grid points are not complete")
        if not values:
            reasons = "; ".join(f"lr={lr:g} wd={wd:g}: {why}" for (lr, wd), why in self.divergences().items())
            raise ValueError(f"every grid point diverged ({reasons})")
        candidates = [p for p in self.points if p in values]
        best = max(candidates, key=lambda p: (values[p], -self.points.index(p)))
        return best, values[best]
