"""The search-then-final protocol over tasks x methods x seeds: search, selection on validation, final, results.

Every step is resumable: finished runs live in the Optuna storage and in `OUT/results.csv`, an interrupted run resumes
from its last epoch checkpoint, and a rerun of the same command only does what is missing. Several workers (processes,
GPUs, machines) can run the same command against one storage; each claims grid points and final runs on its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..data.folders import MANIFEST_FILE, is_folder_ref, open_folder
from ..data.identity import data_identity
from ..data.registry import CUSTOM, FGVC, FGVC_DATASETS, VTAB1K, VTAB_TASKS, parse_target
from ..data.synthetic import TASKS as SYNTHETIC_TASKS
from ..data.synthetic import write_synthetic
from ..data.vtab1k import task_dir
from .files import write_atomic
from .preset import ProtocolPreset
from .results import append_rows
from .runs import RunSpec, check_specs, train_run
from .search import GridStudy, open_storage

STAGES = ("search", "final")
SYNTHETIC_PREFIX = "synthetic_"


@dataclass(frozen=True)
class TaskData:
    """Where a task's data lies (its manifest when it is not in the registry, its folder when it is one's own), and
    the digest of its split files (`data.identity.data_identity`)."""

    benchmark: str
    task: str
    manifest: str | None = None
    data_root: str | None = None
    data_id: str = ""


@dataclass(frozen=True)
class Unit:
    """One (benchmark, task, method, seed): a search study, then a final run."""

    benchmark: str
    task: str
    method: str
    seed: int
    manifest: str | None = None
    data_root: str | None = None
    data_id: str = ""

    @property
    def label(self) -> str:
        return f"{self.benchmark}/{self.task} {self.method} seed {self.seed}"


def resolve_tasks(benchmark: str | None, tasks: list[str] | None, preset: ProtocolPreset) -> list[tuple[str, str]]:
    """`(benchmark, task)` pairs from `--benchmark`/`--tasks` (`all`, names, `benchmark/name`, or folders of one's own:
    `("custom", absolute folder path)`), else the preset's."""
    if not tasks:
        if not preset.tasks:
            raise ValueError(f"no --tasks given and preset {preset.name!r} names none")
        tasks = list(preset.tasks)
    if tasks == ["all"]:
        if benchmark is None:
            raise ValueError("--tasks all needs --benchmark vtab-1k or fgvc")
        names = VTAB_TASKS if parse_target(f"{benchmark}/x", strict=False)[0] == VTAB1K else FGVC_DATASETS
        return [parse_target(f"{benchmark}/{name}") for name in names]
    pairs = []
    for task in tasks:
        if is_folder_ref(task):
            pairs.append((CUSTOM, str(Path(task).expanduser().resolve())))
            continue
        ref = task if "/" in task else f"{benchmark}/{task}" if benchmark else None
        if ref is None:
            raise ValueError(f"task {task!r} needs --benchmark (or write it as BENCHMARK/NAME)")
        pairs.append(parse_target(ref, strict=False))
    return list(dict.fromkeys(pairs))


def prepare_data(
    pairs: list[tuple[str, str]], data_root: Path | None, preset: ProtocolPreset, splits_dir: Path | None = None
) -> tuple[list[TaskData], dict[str, str]]:
    """Checks every task's data before any training: registry folders under the data root, manifests of other tasks
    (`<root>/<task>/manifest.yaml`, synthetic tasks written when missing), folders of one's own (their manifest
    written on first use), and the split files behind each task's data identity.

    Returns:
        The tasks that are ready, and per broken task (`benchmark/task`) what is wrong with it: a broken task does
        not stop the others.

    Raises:
        ValueError: `--data-root` missing for registry tasks, or two task folders of the same name.
    """
    prepared: list[TaskData] = []
    broken: dict[str, str] = {}
    for benchmark, task in pairs:
        try:
            data = _task_data(benchmark, task, data_root, preset, prepared)
            root = Path(data.data_root) if data.data_root else data_root / task if benchmark == FGVC else data_root
            prepared.append(replace(data, data_id=data_identity(benchmark, task, root, splits_dir, data.manifest)))
        except (OSError, ValueError, KeyError) as error:
            if data_root is None and benchmark != CUSTOM or isinstance(error, _Clash):
                raise
            broken[f"{benchmark}/{Path(task).name if benchmark == CUSTOM else task}"] = " ".join(str(error).split())
    return prepared, broken


class _Clash(ValueError):
    """Two task folders of the same name: the command line is wrong, not a task."""


def _task_data(
    benchmark: str, task: str, data_root: Path | None, preset: ProtocolPreset, prepared: list[TaskData]
) -> TaskData:
    if benchmark == CUSTOM:
        manifest = open_folder(task)
        clash = [t for t in prepared if t.benchmark == CUSTOM and t.task == manifest.name]
        if clash:
            raise _Clash(f"task folders {clash[0].data_root} and {task} share the name {manifest.name!r}")
        return TaskData(CUSTOM, manifest.name, str(Path(task) / MANIFEST_FILE), task)
    if data_root is None:
        raise ValueError(f"--data-root is required for {benchmark}/{task} (the folder holding its folder)")
    if task in VTAB_TASKS:
        task_dir(data_root, task)  # fail before any training when a folder is missing
        return TaskData(benchmark, task)
    if task in FGVC_DATASETS:
        if not (data_root / task).is_dir():
            raise FileNotFoundError(f"missing folder {data_root / task} for FGVC dataset {task} (link it there)")
        return TaskData(benchmark, task)
    manifest = data_root / task / "manifest.yaml"
    kind = task.removeprefix(SYNTHETIC_PREFIX)
    if not manifest.is_file() and task.startswith(SYNTHETIC_PREFIX) and kind in SYNTHETIC_TASKS:
        options = preset.synthetic
        write_synthetic(data_root, kind, options.get("counts"), options.get("size", 64), 0, layout=benchmark)
    if not manifest.is_file():
        raise FileNotFoundError(f"task {benchmark}/{task} is not in the registry and {manifest} does not exist")
    return TaskData(benchmark, task, str(manifest))


def recipe_value(preset: ProtocolPreset, key: str, default: Any) -> Any:
    """A setting of the training recipe (`model.epochs`, ...): the preset's override, else the fit config's."""
    if key in preset.overrides:
        return preset.overrides[key]
    value: Any = yaml.safe_load(preset.fit_config.read_text()) or {}
    for part in key.split("."):
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return default if value == {} else value


class Protocol:
    """Search, selection and final for every unit; `run()` returns 0 when everything asked for is done.

    Args:
        preset: the protocol preset.
        units: the (benchmark, task, method, seed) combinations.
        out: the run folder (results.csv, protocol.json, runs/, and optuna.db by default).
        data_root: the folder holding one folder per task or dataset (None when every task is a folder of its own).
        splits_dir: FGVC split files, if not inside the dataset folders.
        storage: Optuna storage URL (default: SQLite in `out`).
        stages: `("search",)` for search-only workers, or both stages.
        devices: devices per run (DDP when more than one).
        progress: Lightning progress bars.
        poll: seconds between checks while waiting for grid points other workers are training.
        heartbeat: seconds between trial heartbeats (RDB storages).
        checkpoint_every: epochs between the checkpoints a killed run resumes from.
        broken: tasks left out before the start, with the reason (reported at the end, and the exit code is 1).
    """

    def __init__(
        self,
        preset: ProtocolPreset,
        units: list[Unit],
        out: Path,
        data_root: Path | None,
        splits_dir: Path | None = None,
        storage: str | None = None,
        stages: tuple[str, ...] = STAGES,
        devices: int = 1,
        progress: bool = True,
        poll: float = 30.0,
        heartbeat: int = 60,
        checkpoint_every: int = 1,
        broken: dict[str, str] | None = None,
    ) -> None:
        self.preset, self.units, self.out, self.stages = preset, units, out, stages
        self.data_root, self.splits_dir = data_root, splits_dir
        self.devices, self.progress, self.poll = devices, progress, poll
        self.fingerprint = preset.fingerprint()
        self.storage_url, self.heartbeat, self.checkpoint_every = storage, heartbeat, checkpoint_every
        self.broken = dict(broken or {})
        self.errors: dict[Unit, str] = {}
        self.schedule_epochs = int(recipe_value(preset, "model.epochs", 100))
        self.results_file = out / "results.csv"
        self.started = time.monotonic()
        self.epochs_done = 0
        self._presets: dict[str, ProtocolPreset] = {}
        self._studies: dict[Unit, GridStudy] = {}
        self._finals: dict[Unit, GridStudy] = {}

    @cached_property
    def storage(self) -> BaseStorage:
        """The study storage, opened (and for SQLite created in `out`) on first use."""
        return open_storage(self.storage_url, self.out, self.heartbeat)

    def check_configurations(self) -> None:
        """Parse one run configuration per method, then one per task, building and writing nothing.

        A bad recipe, method preset or override raises before anything is pinned; a task whose configuration does
        not parse is left out (in `broken`) and the others go on.
        """
        methods = {unit.method: unit for unit in reversed(self.units)}
        check_specs([self._sample_spec(unit) for unit in methods.values()], self.out)
        tasks = {(unit.benchmark, unit.task): unit for unit in reversed(self.units)}
        for (benchmark, task), unit in tasks.items():
            try:
                check_specs([self._sample_spec(unit)], self.out)
            except ValueError as error:
                self.broken[f"{benchmark}/{task}"] = str(error)
        self.units = [u for u in self.units if f"{u.benchmark}/{u.task}" not in self.broken]

    def _sample_spec(self, unit: Unit) -> RunSpec:
        return self.spec(unit, "search", self.preset_for(unit).methods[unit.method].points[0])

    def preset_for(self, unit: Unit) -> ProtocolPreset:
        """The preset as it applies to the unit's benchmark (search length, grids, recipe settings)."""
        if unit.benchmark not in self._presets:
            self._presets[unit.benchmark] = self.preset.for_benchmark(unit.benchmark)
        return self._presets[unit.benchmark]

    def score(self, row: dict[str, Any]) -> float:
        """A search run's objective: its validation top-1 at the last search epoch, or its best (`selection`)."""
        return float(row["best_top1"] if self.preset.selection == "best" else row["top1"])

    def unit_fingerprint(self, unit: Unit) -> str:
        """The digest of the preset and of the unit's data: changed split files never reuse stale results."""
        return hashlib.sha256(f"{self.fingerprint}:{unit.data_id}".encode()).hexdigest()

    def study_name(self, unit: Unit, stage: str) -> str:
        return f"{unit.benchmark}/{unit.task}/{unit.method}/seed{unit.seed}/{stage}@{self.unit_fingerprint(unit)[:12]}"

    def spec(self, unit: Unit, stage: str, point: tuple[float, float]) -> RunSpec:
        preset = self.preset_for(unit)
        grid = preset.methods[unit.method]
        return RunSpec(
            benchmark=unit.benchmark,
            task=unit.task,
            method=unit.method,
            method_config=str(grid.config),
            stage=stage,
            lr=point[0],
            weight_decay=point[1],
            seed=unit.seed,
            fit_config=str(self.preset.fit_config),
            data_root=unit.data_root or str(self.data_root),
            search_epochs=preset.search_epochs,
            preset=self.preset.name,
            fingerprint=self.unit_fingerprint(unit),
            data_identity=unit.data_id,
            splits_dir=str(self.splits_dir) if self.splits_dir else None,
            manifest=unit.manifest,
            final_includes_val=self.preset.final_includes_val,
            overrides={**preset.overrides, **grid.overrides},  # in the preset: its fingerprint covers them
            devices=self.devices,
            progress=self.progress,
            checkpoint_every=self.checkpoint_every,
        )

    def search_study(self, unit: Unit) -> GridStudy:
        if unit not in self._studies:
            points = self.preset_for(unit).methods[unit.method].points
            name = self.study_name(unit, "search")
            self._studies[unit] = GridStudy(self.storage, name, points, unit.seed, score=self.score)
        return self._studies[unit]

    def final_study(self, unit: Unit, point: tuple[float, float]) -> GridStudy:
        if unit not in self._finals:
            self._finals[unit] = GridStudy(self.storage, self.study_name(unit, "final"), [point], unit.seed)
        return self._finals[unit]

    def _train(self, unit: Unit, stage: str):
        def train(point: tuple[float, float]) -> dict[str, Any]:
            spec = self.spec(unit, stage, point)
            row = train_run(spec, self.out)
            self.epochs_done += int(row["epochs"])
            return {**row, "spec": spec.identity()}  # the trial's full configuration, kept by Optuna (not the CSV)

        return train

    def summary(self, last: dict[str, Any] | None = None) -> str:
        """One line: search and final runs done / total over all units, elapsed time, ETA, the latest result."""
        searches = finals = searches_total = remaining = 0
        for unit in self.units:
            states = self.search_study(unit).states()
            done = sum(s in ("complete", "diverged") for s in states.values())
            searches += done
            searches_total += len(states)
            remaining += (len(states) - done) * self.preset_for(unit).search_epochs
            finals += self._final_done(unit)
        elapsed = time.monotonic() - self.started
        if "final" in self.stages:
            remaining += (len(self.units) - finals) * self.schedule_epochs
        eta = f"{timedelta(seconds=round(remaining * elapsed / self.epochs_done))}" if self.epochs_done else "?"
        line = f"[search {searches}/{searches_total}"
        line += f" · final {finals}/{len(self.units)}]" if "final" in self.stages else "]"
        line += f" elapsed {timedelta(seconds=round(elapsed))} · ETA {eta}"
        if last:
            split = "val" if last["stage"] == "search" else "test"
            if last.get("state") == "diverged":
                outcome = f"diverged ({last['reason']})"
            else:
                outcome = f"{split} top-1 {last['top1']:.2f}"
                if last.get("best_epoch") not in (None, ""):
                    outcome += f" (best {last['best_top1']:.2f} at epoch {last['best_epoch']})"
            line += (
                f" · {last['benchmark']}/{last['task']} {last['method']} seed {last['seed']} {last['stage']} "
                f"lr={last['lr']:g} wd={last['weight_decay']:g}: {outcome}"
            )
        return line

    def _final_done(self, unit: Unit) -> bool:
        try:
            study_id = self.storage.get_study_id_from_name(self.study_name(unit, "final"))
        except KeyError:
            return False
        return any(t.state == TrialState.COMPLETE for t in self.storage.get_all_trials(study_id, deepcopy=False))

    def _announce(self, row: dict[str, Any]) -> None:
        append_rows(self.results_file, [row])
        print(self.summary(row), flush=True)

    def _selection(self, unit: Unit, study: GridStudy) -> tuple[float, float]:
        point, value = study.best()
        folder = self.out / "runs" / unit.benchmark / unit.task / unit.method / f"seed{unit.seed}"
        folder.mkdir(parents=True, exist_ok=True)
        rule = "at the last search epoch" if self.preset.selection == "last" else "best over the search epochs"
        record = {
            "selected": {"lr": point[0], "weight_decay": point[1], "val_top1": value},
            "selected_on": f"validation top-1 {rule} (selection: {self.preset.selection}; ties: earlier grid point)",
            "search": {f"lr={r['lr']:g} wd={r['weight_decay']:g}": _search_record(r) for r in study.results()},
        }
        write_atomic(folder / "selection.json", json.dumps(record, indent=1))
        return point

    def step(self, unit: Unit) -> str:
        """Advance one unit as far as this worker can: `done`, `waiting` (others are training) or `failed`."""
        search = self.search_study(unit)
        while search.run_one(self._train(unit, "search"), self._announce):
            pass
        states = search.states()
        if any(s in ("running", "waiting", "new") for s in states.values()):
            return "waiting"
        if any(s == "failed" for s in states.values()):
            return "failed"
        append_rows(self.results_file, search.results())
        if "final" not in self.stages:
            return "done"
        final = self.final_study(unit, self._selection(unit, search))
        final.release_dead_workers()
        final.retry_failed()  # an interrupted final run is redone (from its last checkpoint)
        while final.run_one(self._train(unit, "final"), self._announce):
            pass
        state = final.states()[final.points[0]]
        append_rows(self.results_file, final.results())
        if state == "diverged":
            self.errors[unit] = f"the final run diverged: {final.divergences()[final.points[0]]}"
        return {"complete": "done", "failed": "failed", "diverged": "failed"}.get(state, "waiting")

    def _step_or_fail(self, unit: Unit) -> str:
        """`step`, with any error of the unit (its data, its configuration, every grid point diverged) recorded as
        its failure: one broken unit never stops the others."""
        try:
            return self.step(unit)
        except Exception as error:  # noqa: BLE001 - reported in the summary, with the exit code
            self.errors[unit] = " ".join(f"{type(error).__name__}: {error}".split())
            return "failed"

    def run(self) -> int:
        """Run until every unit is done or failed; 0 if all are done, 1 otherwise (failures listed)."""
        studies = [self.search_study(u) for u in self.units]
        for study in studies:
            study.release_dead_workers()
            study.retry_failed()
            append_rows(self.results_file, study.results())  # rows of runs finished after the CSV was last written
        print(self.summary(), flush=True)
        pending = list(self.units)
        failed: list[Unit] = []
        announced = 0
        while pending:
            states = {unit: self._step_or_fail(unit) for unit in pending}
            failed += [u for u, s in states.items() if s == "failed"]
            pending = [u for u, s in states.items() if s == "waiting"]
            if pending:
                if len(pending) != announced:  # once per change, not once per poll
                    print(f"waiting for {len(pending)} unit(s) that other workers train (checks every {self.poll:g} s)")
                    announced = len(pending)
                time.sleep(self.poll)
                for unit in pending:
                    self.search_study(unit).release_dead_workers()
        print(self.summary(), flush=True)
        for task, reason in self.broken.items():
            print(f"failed: {task}: left out: {reason}", flush=True)
        for unit in failed:
            errors = self.search_study(unit).errors()
            detail = "; ".join(f"lr={lr:g} wd={wd:g}: {e}" for (lr, wd), e in errors.items())
            detail = detail or self.errors.get(unit, "final run failed")
            print(f"failed: {unit.label}: {detail} (rerun the same command to retry)", flush=True)
        if failed or self.broken:
            print(f"{len(failed)} unit(s) failed and {len(self.broken)} task(s) were left out", flush=True)
        return 1 if failed or self.broken else 0


def _search_record(row: dict[str, Any]) -> dict[str, Any] | str:
    """What selection.json keeps of a search run: its last and best validation top-1, or why it diverged."""
    if row.get("state") == "diverged":
        return f"diverged: {row['reason']}"
    return {"last": row["top1"], "best": row.get("best_top1"), "best_epoch": row.get("best_epoch")}


def expand_units(tasks: list[TaskData], methods: list[str], seeds: list[int]) -> list[Unit]:
    """Units in task-major order: every method and seed of the first task before the next task."""
    return [
        Unit(data.benchmark, data.task, method, seed, data.manifest, data.data_root, data.data_id)
        for data in tasks
        for method in methods
        for seed in seeds
    ]
