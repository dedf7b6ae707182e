"""The search-then-final protocol over tasks x methods x seeds: search, selection on validation, final, results.

Every step is resumable: finished runs live in the Optuna storage and in `OUT/results.csv`, an interrupted run resumes
from its last epoch checkpoint, and a rerun of the same command only does what is missing. Several workers (processes,
GPUs, machines) can run the same command against one storage; each claims grid points and final runs on its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..data.folders import MANIFEST_FILE, is_folder_ref, open_folder
from ..data.registry import CUSTOM, FGVC_DATASETS, VTAB1K, VTAB_TASKS, parse_target
from ..data.synthetic import TASKS as SYNTHETIC_TASKS
from ..data.synthetic import write_synthetic
from ..data.vtab1k import task_dir
from .preset import ProtocolPreset
from .results import append_rows
from .runs import RunSpec, check_specs, train_run
from .search import GridStudy, open_storage

STAGES = ("search", "final")
SYNTHETIC_PREFIX = "synthetic_"


@dataclass(frozen=True)
class TaskData:
    """Where a task's data lies: its manifest when it is not in the registry, its folder when it is one's own."""

    benchmark: str
    task: str
    manifest: str | None = None
    data_root: str | None = None


@dataclass(frozen=True)
class Unit:
    """One (benchmark, task, method, seed): a search study, then a final run."""

    benchmark: str
    task: str
    method: str
    seed: int
    manifest: str | None = None
    data_root: str | None = None

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


def prepare_data(pairs: list[tuple[str, str]], data_root: Path | None, preset: ProtocolPreset) -> list[TaskData]:
    """Checks every task's data before any training: registry folders under the data root, manifests of other tasks
    (`<root>/<task>/manifest.yaml`, synthetic tasks written when missing), folders of one's own (their manifest
    written on first use).

    Raises:
        FileNotFoundError: a registry task without its folder, or a task that is neither in the registry nor described
            by a manifest under the data root, or a folder that holds no known layout.
        ValueError: two task folders of the same name.
    """
    prepared: list[TaskData] = []
    for benchmark, task in pairs:
        if benchmark == CUSTOM:
            manifest = open_folder(task)
            clash = [t for t in prepared if t.benchmark == CUSTOM and t.task == manifest.name]
            if clash:
                raise ValueError(f"task folders {clash[0].data_root} and {task} share the name {manifest.name!r}")
            prepared.append(TaskData(CUSTOM, manifest.name, str(Path(task) / MANIFEST_FILE), task))
            continue
        if data_root is None:
            raise ValueError(f"--data-root is required for {benchmark}/{task} (the folder holding its folder)")
        if task in VTAB_TASKS:
            task_dir(data_root, task)  # fail before any training when a folder is missing
            prepared.append(TaskData(benchmark, task))
            continue
        if task in FGVC_DATASETS:
            if not (data_root / task).is_dir():
                raise FileNotFoundError(f"missing folder {data_root / task} for FGVC dataset {task} (link it there)")
            prepared.append(TaskData(benchmark, task))
            continue
        manifest = data_root / task / "manifest.yaml"
        kind = task.removeprefix(SYNTHETIC_PREFIX)
        if not manifest.is_file() and task.startswith(SYNTHETIC_PREFIX) and kind in SYNTHETIC_TASKS:
            options = preset.synthetic
            write_synthetic(data_root, kind, options.get("counts"), options.get("size", 64), 0, layout=benchmark)
        if not manifest.is_file():
            raise FileNotFoundError(f"task {benchmark}/{task} is not in the registry and {manifest} does not exist")
        prepared.append(TaskData(benchmark, task, str(manifest)))
    return prepared


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
    ) -> None:
        self.preset, self.units, self.out, self.stages = preset, units, out, stages
        self.data_root, self.splits_dir = data_root, splits_dir
        self.devices, self.progress, self.poll = devices, progress, poll
        self.fingerprint = preset.fingerprint()
        self.storage_url, self.heartbeat = storage, heartbeat
        self.schedule_epochs = int(recipe_value(preset, "model.epochs", 100))
        self.results_file = out / "results.csv"
        self.started = time.monotonic()
        self.epochs_done = 0
        self._studies: dict[Unit, GridStudy] = {}
        self._finals: dict[Unit, GridStudy] = {}

    @cached_property
    def storage(self) -> BaseStorage:
        """The study storage, opened (and for SQLite created in `out`) on first use."""
        return open_storage(self.storage_url, self.out, self.heartbeat)

    def check_configurations(self) -> None:
        """Parse one run configuration per method and one per task, building and writing nothing: a bad recipe,
        method preset or override fails before anything is pinned."""
        samples: dict[tuple[str, ...], Unit] = {}
        for unit in self.units:
            samples.setdefault(("method", unit.method), unit)
            samples.setdefault(("task", unit.benchmark, unit.task), unit)
        points = {unit: self.preset.methods[unit.method].points[0] for unit in samples.values()}
        check_specs([self.spec(unit, "search", point) for unit, point in points.items()], self.out)

    def study_name(self, unit: Unit, stage: str) -> str:
        return f"{unit.benchmark}/{unit.task}/{unit.method}/seed{unit.seed}/{stage}@{self.fingerprint[:12]}"

    def spec(self, unit: Unit, stage: str, point: tuple[float, float]) -> RunSpec:
        grid = self.preset.methods[unit.method]
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
            search_epochs=self.preset.search_epochs,
            preset=self.preset.name,
            fingerprint=self.fingerprint,
            splits_dir=str(self.splits_dir) if self.splits_dir else None,
            manifest=unit.manifest,
            final_includes_val=self.preset.final_includes_val,
            overrides={**self.preset.overrides, **grid.overrides},  # in the preset: its fingerprint covers them
            devices=self.devices,
            progress=self.progress,
        )

    def search_study(self, unit: Unit) -> GridStudy:
        if unit not in self._studies:
            points = self.preset.methods[unit.method].points
            self._studies[unit] = GridStudy(self.storage, self.study_name(unit, "search"), points, unit.seed)
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
        searches = finals = searches_total = 0
        for unit in self.units:
            states = self.search_study(unit).states()
            searches += sum(s == "complete" for s in states.values())
            searches_total += len(states)
            finals += self._final_done(unit)
        elapsed = time.monotonic() - self.started
        remaining = (searches_total - searches) * self.preset.search_epochs
        if "final" in self.stages:
            remaining += (len(self.units) - finals) * self.schedule_epochs
        eta = f"{timedelta(seconds=round(remaining * elapsed / self.epochs_done))}" if self.epochs_done else "?"
        line = f"[search {searches}/{searches_total}"
        line += f" · final {finals}/{len(self.units)}]" if "final" in self.stages else "]"
        line += f" elapsed {timedelta(seconds=round(elapsed))} · ETA {eta}"
        if last:
            split = "val" if last["stage"] == "search" else "test"
            line += (
                f" · {last['benchmark']}/{last['task']} {last['method']} seed {last['seed']} {last['stage']} "
                f"lr={last['lr']:g} wd={last['weight_decay']:g}: {split} top-1 {last['top1']:.2f}"
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
        record = {
            "selected": {"lr": point[0], "weight_decay": point[1], "val_top1": value},
            "selected_on": "validation top-1 of the search runs (ties: earlier grid point)",
            "search": {f"lr={r['lr']:g} wd={r['weight_decay']:g}": r["top1"] for r in study.results()},
        }
        (folder / "selection.json").write_text(json.dumps(record, indent=1))
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
        return {"complete": "done", "failed": "failed"}.get(state, "waiting")

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
            states = {unit: self.step(unit) for unit in pending}
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
        for unit in failed:
            errors = self.search_study(unit).errors()
            detail = "; ".join(f"lr={lr:g} wd={wd:g}: {e}" for (lr, wd), e in errors.items()) or "final run failed"
            print(f"failed: {unit.label}: {detail} (rerun the same command to retry)")
        return 1 if failed else 0


def expand_units(tasks: list[TaskData], methods: list[str], seeds: list[int]) -> list[Unit]:
    """Units in task-major order: every method and seed of the first task before the next task."""
    return [
        Unit(data.benchmark, data.task, method, seed, data.manifest, data.data_root)
        for data in tasks
        for method in methods
        for seed in seeds
    ]
