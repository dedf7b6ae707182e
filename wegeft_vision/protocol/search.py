"""The grid search on Optuna: one study per (benchmark, task, method, seed, stage), shared by any number of workers.

Optuna stores every trial (params, state, value, the results row as a user attribute) in an embedded SQLite file or
any storage URL, so workers on several GPUs or machines pull grid points from one study. `GridSampler` hands out the
grid; this module adds what the protocol needs on top:

- idempotence: a grid point with a COMPLETE trial is never trained again; a point whose trials all FAILED (an error,
  or an interrupted worker) is enqueued once more when a worker starts;
- no duplicates: a worker that draws a point another live worker started earlier (a race after the first pass over
  the grid) prunes its trial without training (user attribute `duplicate_of`);
- dead workers: a RUNNING trial whose worker process is gone (same host) is failed at once; on another host,
  Optuna's heartbeat (RDB storages) fails it after the grace period.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

Point = tuple[float, float]
WORKER = f"{socket.gethostname()}:{os.getpid()}"
logging.getLogger("optuna").setLevel(logging.WARNING)


class _KnownNotices(logging.Filter):
    """Drops Optuna records that say nothing new here: GridSampler's notice about re-evaluating a point (such a trial
    is pruned without training) and the traceback of a failed trial (the protocol reports the failure itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "re-evaluating a configuration" not in message and not (
            message.startswith("Trial ") and " failed " in message
        )


for _name in ("optuna.samplers._grid", "optuna.study._optimize"):
    logging.getLogger(_name).addFilter(_KnownNotices())


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an Optuna API that warns it is experimental (heartbeats, stale trials, enqueued user attributes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return call(*args, **kwargs)


def open_storage(url: str | None, out: Path, heartbeat: int = 60) -> BaseStorage:
    """The storage of the protocol's studies.

    Args:
        url: None for `sqlite:///OUT/optuna.db` (embedded, no server); an RDB URL (`postgresql://...`,
            `mysql+pymysql://...`, `sqlite:///...`); or `journal:PATH` for Optuna's journal file (NFS-friendly).
        out: the run folder.
        heartbeat: seconds between heartbeats of a running trial (RDB storages); a trial silent for three heartbeats
            is failed and redone.
    """
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{out.resolve() / 'optuna.db'}"
    if url.startswith("journal:"):
        return _quietly(JournalStorage, JournalFileBackend(url.removeprefix("journal:")))
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return _quietly(
                RDBStorage, url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat
            )
        except SQLAlchemyError:  # workers racing to create the schema of a new database: the loser retries
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _point(trial: FrozenTrial) -> Point | None:
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return (params["lr"], params["weight_decay"]) if "lr" in params and "weight_decay" in params else None


def _worker_alive(worker: str | None) -> bool:
    host, _, pid = (worker or "").partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GridStudy:
    """The lr x weight-decay grid of one study.

    Args:
        storage: from `open_storage`.
        name: the study's name (unique per benchmark, task, method, seed, stage and protocol fingerprint).
        points: the grid (lr, weight decay) in selection tie-break order.
        seed: seed of the sampler's choice among free points.
    """

    def __init__(self, storage: BaseStorage, name: str, points: Sequence[Point], seed: int = 0) -> None:
        self.name = name
        self.points = list(points)
        self.lrs = list(dict.fromkeys(lr for lr, _ in self.points))
        self.wds = list(dict.fromkeys(wd for _, wd in self.points))
        if len(self.points) != len(self.lrs) * len(self.wds):
            raise ValueError(f"study {name}: the points do not form an lr x weight-decay grid")
        sampler = optuna.samplers.GridSampler({"lr": self.lrs, "weight_decay": self.wds}, seed=seed)
        self.study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
        )
        self._retried: set[Point] = set()

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def states(self) -> dict[Point, str]:
        """Per point: `complete`, `running`, `waiting` (enqueued), `failed` (only failed trials) or `new`."""
        seen: dict[Point, set[TrialState]] = {p: set() for p in self.points}
        for trial in self.trials():
            if (point := _point(trial)) in seen and "duplicate_of" not in trial.user_attrs:
                seen[point].add(trial.state)
        states = {}
        for point, found in seen.items():
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
        """Fail the RUNNING trials of worker processes on this host that no longer exist; returns their numbers."""
        released = []
        for trial in self.trials():
            if trial.state == TrialState.RUNNING and not _worker_alive(trial.user_attrs.get("worker")):
                try:
                    self.study.tell(trial.number, state=TrialState.FAIL)
                    released.append(trial.number)
                except (RuntimeError, ValueError):
                    pass  # another worker finished or failed it meanwhile
        _quietly(optuna.storages.fail_stale_trials, self.study)
        return released

    def retry_failed(self) -> list[Point]:
        """Enqueue one new trial for every point whose trials all failed (once per worker lifetime)."""
        retried = [p for p, s in self.states().items() if s == "failed" and p not in self._retried]
        for lr, wd in retried:
            _quietly(self.study.enqueue_trial, {"lr": lr, "weight_decay": wd}, user_attrs={"retry": True})
        self._retried.update(retried)
        return retried

    def has_free_point(self) -> bool:
        return any(s in ("new", "waiting") for s in self.states().values())

    def _superseded_by(self, trial: optuna.Trial, point: Point) -> int | None:
        mine = (trial.datetime_start, trial.number)
        for other in self.trials():
            if other.number == trial.number or _point(other) != point or "duplicate_of" in other.user_attrs:
                continue
            if other.state == TrialState.COMPLETE:
                return other.number
            if other.state == TrialState.RUNNING and (other.datetime_start, other.number) < mine:
                return other.number
        return None

    def run_one(self, train: Callable[[Point], dict[str, Any]], on_done: Callable[[dict[str, Any]], None]) -> bool:
        """Claim one free point and train it; False when no point is free.

        `train(point)` returns the results row (its `top1` is the objective); `on_done(row)` is called once the
        trial is COMPLETE in the storage. A training error fails the trial (recorded as `error`) and is re-raised.
        """
        if not self.has_free_point():
            return False

        def objective(trial: optuna.Trial) -> float:
            point = (trial.suggest_categorical("lr", self.lrs), trial.suggest_categorical("weight_decay", self.wds))
            trial.set_user_attr("worker", WORKER)
            if (other := self._superseded_by(trial, point)) is not None:
                trial.set_user_attr("duplicate_of", other)
                raise optuna.TrialPruned(f"point {point} is trained by trial {other}")
            try:
                row = train(point)
            except SystemExit as exit_:  # Lightning exits on Ctrl-C; let Optuna fail the trial
                raise KeyboardInterrupt from exit_
            except Exception as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
                raise
            trial.set_user_attr("result", row)
            return float(row["top1"])

        def completed(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE:
                on_done(trial.user_attrs["result"])

        self.study.optimize(objective, n_trials=1, callbacks=[completed])
        return True

    def results(self) -> list[dict[str, Any]]:
        """The results rows of the COMPLETE trials (one per point)."""
        rows = {}
        for trial in self.trials():
            if trial.state == TrialState.COMPLETE and "result" in trial.user_attrs:
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

    def best(self) -> tuple[Point, float]:
        """The point with the highest value; ties go to the earlier point in grid order.

        Raises:
            ValueError: some point is not complete yet.
        """
        values: dict[Point, float] = {}
        for trial in self.trials():
            if trial.state == TrialState.COMPLETE and "duplicate_of" not in trial.user_attrs:
                values.setdefault(_point(trial), trial.value)
        missing = [p for p in self.points if p not in values]
        if missing:
            raise ValueError(f"study {self.name}: {len(missing)} grid points are not complete")
        best = max(self.points, key=lambda p: (values[p], -self.points.index(p)))
        return best, values[best]
