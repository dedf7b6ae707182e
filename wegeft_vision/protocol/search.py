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
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat  # the interface Optuna's heartbeat thread and stale check use
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

Point = tuple[float, float]
WORKER = f"{socket.gethostname()}:{os.getpid()}"
UNRECORDED_GRACE = 30.0  # seconds after which a RUNNING trial that names no worker is taken for dead
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


def _new_trial_template(template: FrozenTrial | None, attrs: dict[str, Any]) -> FrozenTrial | None:
    """The template of a trial claimed from the grid (`ask` passes none): its first write names the worker, so a
    worker killed before its objective ran is known dead at once. Enqueued or added trials keep their own."""
    if template is not None:
        return template
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs=attrs,
        intermediate_values={},
        trial_id=-1,
    )


class _ReleasingStorage:
    """What the protocol's storages add to Optuna's: a trial names its worker (system attribute `worker`) from the
    moment it is claimed, and a trial failed for a stopped heartbeat has its point enqueued again."""

    def _claim_attrs(self) -> dict[str, Any]:
        return {"worker": WORKER}

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        claimed = super().set_trial_state_values(trial_id, state, values)  # type: ignore[misc]
        if claimed and state == TrialState.RUNNING:  # an enqueued trial this worker took
            for key, value in self._claim_attrs().items():
                self.set_trial_system_attr(trial_id, key, value)  # type: ignore[attr-defined]
        return claimed

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None]:
        return _enqueue_again

    get_failed_trial_callback = get_heartbeat_stale_trial_callback  # its name before Optuna 4.9


class _RDBStorage(_ReleasingStorage, RDBStorage):
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # called by `create_new_trial` and by the cache Optuna puts in front of every RDB storage
        return super()._create_new_trial(study_id, _new_trial_template(template_trial, self._claim_attrs()))


class _JournalStorage(_ReleasingStorage, JournalStorage, BaseHeartbeat):
    """Optuna's journal file with the heartbeat it lacks: Optuna's heartbeat thread stamps a RUNNING trial's system
    attribute `heartbeat` (seconds since the epoch on the writer's clock: hosts must agree well within the grace
    period), and `fail_stale_trials` fails a trial silent for three heartbeats."""

    def __init__(self, path: str, heartbeat: int) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat

    def _claim_attrs(self) -> dict[str, Any]:
        return {"worker": WORKER, "heartbeat": time.time()}  # the first beat with the claim: never a silent trial

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, _new_trial_template(template_trial, self._claim_attrs()))

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):  # released meanwhile: its worker learns it when it reports
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, grace = time.time(), 3 * self.heartbeat_interval
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if now - t.system_attrs.get("heartbeat", now) > grace]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval


def open_storage(url: str | None, out: Path, heartbeat: int = 60) -> BaseStorage:
    """The storage of the protocol's studies.

    Args:
        url: None for `sqlite:///OUT/optuna.db` (embedded, no server); an RDB URL (`postgresql://...`,
            `mysql+pymysql://...`, `sqlite:///...`); or `journal:PATH` for Optuna's journal file (NFS-friendly).
        out: the run folder.
        heartbeat: seconds between heartbeats of a running trial; a trial silent for three heartbeats is failed and
            redone.
    """
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{out.resolve() / 'optuna.db'}"
    if url.startswith("journal:"):
        return _quietly(_JournalStorage, str(Path(url.removeprefix("journal:")).expanduser()), heartbeat)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return _quietly(
                _RDBStorage, url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat
            )
        except SQLAlchemyError:  # workers racing to create the schema of a new database: the loser retries
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _point(trial: FrozenTrial) -> Point | None:
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return (params["lr"], params["weight_decay"]) if "lr" in params and "weight_decay" in params else None


def _claimed_point(study: optuna.Study, trial: FrozenTrial) -> Point | None:
    """A trial's grid point, also when its worker died after claiming it and before asking for its params."""
    point, grid, space = _point(trial), study.sampler, trial.system_attrs.get("search_space") or {}
    if point is None and set(space) == {"lr", "weight_decay"} and isinstance(grid, GridSampler):
        names = ("lr", "weight_decay")  # the sampler maps its grid id to the values
        lr, wd = (grid.sample_independent(study, trial, name, CategoricalDistribution(space[name])) for name in names)
        point = (lr, wd)
    return point


def _enqueue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the point of a trial failed because its worker is gone (also the storages' callback for a stopped
    heartbeat), so that the live workers redo it, from its last checkpoint, without waiting for a restart."""
    point = _claimed_point(study, trial)
    if point is not None and "duplicate_of" not in trial.user_attrs:
        _quietly(study.enqueue_trial, {"lr": point[0], "weight_decay": point[1]}, user_attrs={"retry": True})


def _fail(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail another worker's RUNNING trial; False when it was finished first. Not `study.tell`: that runs the sampler's
    `after_trial`, whose `study.stop()` raises outside `optimize` once the rest of the grid is done."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


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
        sampler = optuna.samplers.GridSampler({"lr": self.lrs, "weight_decay": self.wds}, seed=seed)
        self.study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
        )
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
            if trial.state == TrialState.RUNNING and _worker_gone(trial, now) and _fail(self.study, trial):
                _enqueue_again(self.study, trial)
                released.append(trial.number)
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
            if other.state == TrialState.COMPLETE or "diverged" in other.user_attrs:
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
            if row.get("state") == "diverged":  # a result, not an error: never retried, never selected
                trial.set_user_attr("diverged", row["reason"])
                raise optuna.TrialPruned(f"point {point} diverged: {row['reason']}")
            return self.score(row)

        def completed(study: optuna.Study, trial: FrozenTrial) -> None:
            if trial.state == TrialState.COMPLETE or "diverged" in trial.user_attrs:
                on_done(trial.user_attrs["result"])

        self.study.optimize(objective, n_trials=1, callbacks=[completed])
        return True

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
