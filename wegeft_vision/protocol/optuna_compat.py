"""Every use of Optuna's private API, in one place (as pandas keeps `pandas/compat/`).

What the protocol needs and Optuna does not offer publicly: system attributes written with a trial's first write
(the RDB storages' `_create_new_trial`), a heartbeat and a kill-safe lock for the journal file
(`storages._heartbeat.BaseHeartbeat`, `storages.journal._file.BaseJournalFileLock`), a
callback for heartbeat-stale trials under both of its names, a trial's storage id, the system attributes by which
`GridSampler` and the trial queue assign a point (`grid_id`, `search_space`, `fixed_params`), and the loggers of
Optuna's modules. Nothing runs at import: `prepare` (called when a storage is opened) checks the installed Optuna
against `SUPPORTED` and installs the log filters. `tests/faults/test_optuna_compat.py` fails when an Optuna changes what
this module relies on; widen `SUPPORTED`, and the range in pyproject.toml, only once it passes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import (
    BaseHeartbeat,  # the interface of Optuna's heartbeat thread and stale check
    get_heartbeat_thread,  # what `optimize` runs beside a trial
)
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock  # what `JournalFileBackend` takes as its lock
from optuna.trial import FrozenTrial, TrialState, create_trial

from ..files import exclusive_lock

# (major, minor) at least, below: 4.3 brought `UpdateFinishedTrialError`; 4.3, 4.4, 4.8, 4.9 and 5.0 pass those tests
SUPPORTED = ((4, 3), (5, 1))
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]
NOTICE_LOGGERS = ("optuna.samplers._grid", "optuna.study._optimize")  # the modules whose notices `_KnownNotices` drops


def supported_range() -> str:
    """The supported Optuna versions as a requirement specifier, e.g. `>=4.3,<5.1`."""
    low, high = (".".join(map(str, v)) for v in SUPPORTED)
    return f">={low},<{high}"


def check_version(version: str | None = None) -> None:
    """Refuse an Optuna outside `SUPPORTED`: the hooks below might silently stop being called there.

    Args:
        version: the version to check (default: the installed one).

    Raises:
        ValueError: naming the installed version and the supported range.
    """
    version = version or optuna.__version__
    found = re.match(r"(\d+)\.(\d+)", version)
    release = (int(found[1]), int(found[2])) if found else (0, 0)
    if not SUPPORTED[0] <= release < SUPPORTED[1]:
        raise ValueError(
            f"optuna {version} is installed; wegeft-vision's study storages support optuna{supported_range()}: "
            f"pip install 'optuna{supported_range()}'"
        )


class _KnownNotices(logging.Filter):
    """Drops Optuna records that say nothing new here: GridSampler's notice about re-evaluating a point (such a trial
    is pruned without training) and the traceback of a failed trial (the protocol reports the failure itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "re-evaluating a configuration" not in message and not (
            message.startswith("Trial ") and " failed " in message
        )


@functools.cache
def _quiet_notices() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in NOTICE_LOGGERS:
        logging.getLogger(name).addFilter(_KnownNotices())


def prepare() -> None:
    """Check the installed Optuna (every call) and quiet its notices (once per process)."""
    check_version()
    _quiet_notices()


def quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an Optuna API that warns it is experimental (heartbeats, stale trials, the journal file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return call(*args, **kwargs)


def _new_trial_template(template: FrozenTrial | None, attrs: Mapping[str, Any]) -> FrozenTrial | None:
    """The template of a trial claimed by `ask` (which passes none) carrying `attrs`; enqueued or added trials keep
    their own template (their attributes are written when a worker takes them)."""
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
        system_attrs=dict(attrs),
        intermediate_values={},
        trial_id=-1,
    )


class _HookedStorage:
    """What the protocol's storages add to Optuna's: `claim_attrs()` written as system attributes with the first
    write of a trial a worker claims (created by `ask`, or taken from the queue), and `on_stale` called with each trial
    failed because its heartbeat stopped."""

    attrs: Mapping[str, Any]
    on_stale: StaleCallback

    def claim_attrs(self) -> dict[str, Any]:
        return dict(self.attrs)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        claimed = super().set_trial_state_values(trial_id, state, values)  # type: ignore[misc]
        if claimed and state == TrialState.RUNNING:  # an enqueued trial this worker took
            for key, value in self.claim_attrs().items():
                self.set_trial_system_attr(trial_id, key, value)  # type: ignore[attr-defined]
        return claimed

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback:
        return self.on_stale

    get_failed_trial_callback = get_heartbeat_stale_trial_callback  # its name before Optuna 4.9


class _RDBStorage(_HookedStorage, RDBStorage):
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # called by `create_new_trial` and by the cache Optuna puts in front of every RDB storage
        return super()._create_new_trial(study_id, _new_trial_template(template_trial, self.claim_attrs()))


class _JournalFlock(BaseJournalFileLock):
    """The journal's writers take turns through `flock` on `<journal>.flock`, which the kernel releases when its holder
    dies. Optuna's own locks are files that a SIGKILLed writer leaves behind; every waiting writer breaks such a lock
    after its grace period, and the second to break it removes the first one's fresh lock ("did not possess lock")."""

    def __init__(self, journal: str) -> None:
        self.path = journal + ".flock"
        self._held = threading.local()  # the heartbeat thread writes too

    def acquire(self) -> bool:
        lock = exclusive_lock(self.path)
        lock.__enter__()
        self._held.lock = lock
        return True

    def release(self) -> None:
        self._held.__dict__.pop("lock").__exit__(None, None, None)


class _JournalStorage(_HookedStorage, JournalStorage, BaseHeartbeat):
    """Optuna's journal file with the heartbeat it lacks: Optuna's heartbeat thread stamps a RUNNING trial's system
    attribute `heartbeat` (seconds since the epoch on the writer's clock: hosts must agree well within the grace
    period), and `fail_stale_trials` fails a trial silent for three heartbeats. Writers lock through `_JournalFlock`."""

    def __init__(self, path: str, heartbeat: int) -> None:
        super().__init__(JournalFileBackend(path, lock_obj=_JournalFlock(path)))
        self.heartbeat_interval = heartbeat

    def claim_attrs(self) -> dict[str, Any]:
        return {**self.attrs, "heartbeat": time.time()}  # the first beat with the claim: never a silent trial

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, _new_trial_template(template_trial, self.claim_attrs()))

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):  # released meanwhile: its worker learns it when it reports
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, grace = time.time(), 3 * self.heartbeat_interval
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running if now - t.system_attrs.get("heartbeat", now) > grace]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval


def rdb_storage(
    url: str, heartbeat: int, attrs: Mapping[str, Any], on_stale: StaleCallback, engine_kwargs: dict[str, Any]
) -> BaseStorage:
    """Optuna's RDB storage with the hooks of `_HookedStorage`; a trial silent for three heartbeats is stale.

    Args:
        url: the SQLAlchemy URL.
        heartbeat: seconds between heartbeats of a running trial.
        attrs: system attributes written with the first write of every trial a worker claims.
        on_stale: called with each trial failed for a stopped heartbeat (by `fail_stale_trials` of any worker).
        engine_kwargs: SQLAlchemy `create_engine` arguments.
    """
    storage = quietly(
        _RDBStorage, url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat
    )
    storage.attrs, storage.on_stale = dict(attrs), on_stale
    return storage


def journal_storage(path: str, heartbeat: int, attrs: Mapping[str, Any], on_stale: StaleCallback) -> BaseStorage:
    """Optuna's journal file with the hooks of `_HookedStorage` and a heartbeat (see `rdb_storage` for the args)."""
    storage = quietly(_JournalStorage, path, heartbeat)
    storage.attrs, storage.on_stale = dict(attrs), on_stale
    return storage


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's: fail the RUNNING trials whose heartbeat stopped, then call the storage's stale-trial callback."""
    quietly(optuna.storages.fail_stale_trials, study)


def fail_trial(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail a RUNNING trial of another worker; False when it was finished first. Not `study.tell`: that runs the
    sampler's `after_trial`, whose `study.stop()` raises outside `optimize` once the rest of the grid is done."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params: those it asked for, else those it was enqueued with."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def claimed_params(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params, also when its worker died after claiming it and before asking for them: GridSampler assigned
    it the point of its `grid_id`. Empty when it was assigned none."""
    sampler, grid_id = study.sampler, trial.system_attrs.get("grid_id")
    if trial_params(trial) or not isinstance(sampler, GridSampler) or not isinstance(grid_id, int):
        return trial_params(trial)
    if trial.system_attrs.get("search_space") != sampler._search_space or not 0 <= grid_id < len(sampler._all_grids):
        return {}
    return dict(zip(sampler._param_names, sampler._all_grids[grid_id], strict=True))


def _grid_attrs(study: optuna.Study, params: Mapping[str, Any]) -> dict[str, Any]:
    """Under `GridSampler`, the system attributes that assign `params` their point of the grid; else none."""
    sampler = study.sampler
    if isinstance(sampler, GridSampler) and set(params) == set(sampler._param_names):
        point = tuple(params[name] for name in sampler._param_names)
        if point in sampler._all_grids:
            return {"search_space": sampler._search_space, "grid_id": sampler._all_grids.index(point)}
    return {}


def give_grid_ids(study: optuna.Study) -> int:
    """Give its grid id to every enqueued trial that lacks one (enqueued by a version of this toolkit before
    `enqueue` gave them), so that the rerun of such a study completes at once; returns how many were mended."""
    mended = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if "grid_id" not in trial.system_attrs and (params := trial.system_attrs.get("fixed_params")):
            for key, value in _grid_attrs(study, params).items():
                study._storage.set_trial_system_attr(trial._trial_id, key, value)
                mended += key == "grid_id"
    return mended


def enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """`study.enqueue_trial`, except that under `GridSampler` the trial carries the grid id of its point, as a trial
    retried by Optuna's own `RetryFailedTrialCallback` does: `GridSampler.after_trial` reads the grid id of the trial
    that finished whenever a single point of the grid is left, and raises `KeyError: 'grid_id'` for one without."""
    system_attrs: dict[str, Any] = {"fixed_params": params, **_grid_attrs(study, params)}
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs=system_attrs, user_attrs=user_attrs))


def finish_trial(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None) -> bool:
    """Finish a trial this worker claimed with `study.ask` (a packed run's points); False when it was finished first.
    Not `study.tell`, for the reason `fail_trial` gives."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, state, None if value is None else [value])
    except UpdateFinishedTrialError:
        return False


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """Optuna's heartbeat thread for each trial claimed with `study.ask` (what `optimize` runs for its one trial)."""
    with contextlib.ExitStack() as stack:
        for trial in trials:
            stack.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        yield
