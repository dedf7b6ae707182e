"""The search-then-final protocol over tasks x methods x seeds: search, selection on validation, final, results.

Every step is resumable: finished runs live in the Optuna storage and in `OUT/results.csv`, an interrupted run resumes
from its last epoch checkpoint, and a rerun of the same command only does what is missing. Several workers (processes,
GPUs, machines) can run the same command against one storage; each claims grid points and final runs on its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..data.tasks import Task
from ..files import write_atomic
from ..training.run_config import RunConfig
from .preset import ProtocolPreset
from .request import STAGES
from .results import append_rows, check_against_runs
from .runs import RunSpec, pack_dir, train_pack
from .search import GridStudy, open_storage

CLAIM_LOCK = ".claims.lock"  # in the run folder: workers claim a pack's points in turns


@dataclass(frozen=True)
class Unit:
    """One (task, method, seed): a search study, then a final run; `data_id` is the task's data identity
    (`Task.identity`), part of the unit's study names and run fingerprints."""

    task: Task
    method: str
    seed: int
    data_id: str = ""

    @property
    def benchmark(self) -> str:
        return self.task.benchmark

    @property
    def label(self) -> str:
        return f"{self.task.ref} {self.method} seed {self.seed}"


class Protocol:
    """Search, selection and final for every unit; `run()` returns 0 when everything asked for is done.

    Args:
        preset: the protocol preset.
        units: the (task, method, seed) combinations.
        out: the run folder (results.csv, protocol.json, runs/, and optuna.db by default).
        storage: Optuna storage URL (default: SQLite in `out`).
        stages: `("search",)` for search-only workers, or both stages.
        devices: devices per run (DDP when more than one).
        progress: Lightning progress bars.
        poll: seconds between checks while waiting for grid points other workers are training.
        heartbeat: seconds between trial heartbeats (RDB storages).
        checkpoint_every: epochs between the checkpoints a killed run resumes from.
        announce: print a line when a run starts (a SLURM job's log tells which runs the job trained).
        pack: search points of a unit trained together in one run (`runs.train_pack`), or `auto` (as many as fit in
            memory, `training.packing.points_that_fit`); a method that cannot pack trains one point at a time (said
            once).
        broken: tasks left out before the start, with the reason (reported at the end, and the exit code is 1).
    """

    def __init__(
        self,
        preset: ProtocolPreset,
        units: list[Unit],
        out: Path,
        storage: str | None = None,
        stages: tuple[str, ...] = STAGES,
        devices: int = 1,
        progress: bool = True,
        poll: float = 30.0,
        heartbeat: int = 60,
        checkpoint_every: int = 1,
        broken: dict[str, str] | None = None,
        announce: bool = False,
        pack: int | str = 1,
    ) -> None:
        self.preset, self.units, self.out, self.stages = preset, units, out, stages
        self.devices, self.progress, self.poll = devices, progress, poll
        self.fingerprint = preset.fingerprint()
        self.storage_url, self.heartbeat, self.checkpoint_every = storage, heartbeat, checkpoint_every
        self.broken = dict(broken or {})
        self.announce = announce
        self.pack = pack
        self._pack_sizes: dict[tuple[str, str], int] = {}
        self.errors: dict[Unit, str] = {}
        self._schedule_epochs: dict[Unit, int] = {}
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
        """Parse one run configuration per method, then one per task, then build each method on the meta device
        (`RunConfig.check_method`) once per benchmark it runs on, writing nothing.

        A bad recipe, method preset or override raises before anything is pinned; a task whose configuration does
        not parse is left out (in `broken`) and the others go on.
        """
        methods = {unit.method: unit for unit in reversed(self.units)}
        for unit in methods.values():
            self.sample_config(unit).resolved  # noqa: B018 - parsed, or a ValueError naming what is wrong
        tasks = {unit.task: unit for unit in reversed(self.units)}
        for task, unit in tasks.items():
            try:
                self.sample_config(unit).resolved  # noqa: B018
            except ValueError as error:
                self.broken[task.ref] = str(error)
        self.units = [u for u in self.units if u.task.ref not in self.broken]
        first: dict[tuple[str, str], Unit] = {}  # per benchmark: its overrides may change the backbone
        for unit in self.units:
            first.setdefault((unit.benchmark, unit.method), unit)
        for unit in first.values():
            self.sample_config(unit).check_method(unit.method)

    def check_results(self) -> None:
        """Refuse a `results.csv` whose rows disagree with their runs' `result.json` (a value edited by hand): a rerun
        would neither correct such a row (its run key is there) nor may it overwrite what someone wrote.

        Raises:
            ValueError: naming each row (file, line, column, both values) and the way out.
        """
        check_against_runs(
            self.results_file,
            "the protocol neither keeps nor overwrites such a row: delete the line(s) and rerun the same command, "
            "which writes them again from the runs' records",
        )

    def sample_config(self, unit: Unit, stage: str = "search") -> RunConfig:
        """The configuration of the unit's first grid point in `stage` (its recipe-level settings are read from it)."""
        return self.spec(unit, stage, self.preset_for(unit).methods[unit.method].points[0]).config

    def schedule_epochs(self, unit: Unit) -> int:
        """The length of the unit's schedule (what its final run trains)."""
        if unit not in self._schedule_epochs:
            self._schedule_epochs[unit] = self.sample_config(unit, "final").schedule_epochs
        return self._schedule_epochs[unit]

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
        return f"{unit.task.ref}/{unit.method}/seed{unit.seed}/{stage}@{self.unit_fingerprint(unit)[:12]}"

    def spec(self, unit: Unit, stage: str, point: tuple[float, float]) -> RunSpec:
        preset = self.preset_for(unit)
        grid = preset.methods[unit.method]
        config = RunConfig(
            recipe=self.preset.fit_config,
            method=grid.config,
            data=unit.task.data_arguments(),
            stage=stage,
            lr=point[0],
            weight_decay=point[1],
            seed=unit.seed,
            overrides={**preset.overrides, **grid.overrides},  # in the preset: its fingerprint covers them
            stop_epoch=preset.search_epochs if stage == "search" else None,
            final_includes_val=self.preset.final_includes_val,
            devices=self.devices,
        )
        return RunSpec(
            benchmark=unit.benchmark,
            task=unit.task.name,
            method=unit.method,
            preset=self.preset.name,
            fingerprint=self.unit_fingerprint(unit),
            config=config,
            data_identity=unit.data_id,
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
        def train(points: list[tuple[float, float]]) -> list[dict[str, Any]]:
            specs = [self.spec(unit, stage, point) for point in points]
            if self.announce:
                where = pack_dir(specs, self.out) if len(specs) > 1 else specs[0].run_dir(self.out)
                print(f"training {where.relative_to(self.out)}", flush=True)
            rows = train_pack(specs, self.out)
            self.epochs_done += sum(int(row["epochs"]) for row in rows)
            # the trial's full configuration, kept by Optuna (not the CSV)
            return [{**row, "spec": spec.identity()} for row, spec in zip(rows, specs, strict=True)]

        return train

    def pack_size(self, unit: Unit) -> int:
        """How many search points of the unit train together: `pack`, measured for `auto`, 1 for a method that
        cannot pack (said once per method and benchmark)."""
        key = (unit.benchmark, unit.method)
        if self.pack == 1 or key in self._pack_sizes:
            return self._pack_sizes.get(key, 1)
        config = self.sample_config(unit)
        grid = len(self.preset_for(unit).methods[unit.method].points)
        if (refusal := config.packing_refusal()) is not None:
            print(f"{unit.method} trains one point at a time: it cannot be packed ({refusal})", flush=True)
            size = 1
        elif self.pack == "auto":
            from ..training.packing import points_that_fit

            size = points_that_fit(config, grid)
            print(f"--pack auto: {unit.method} on {unit.benchmark} trains {size} point(s) at a time", flush=True)
        else:
            size = min(int(self.pack), grid)
        self._pack_sizes[key] = size
        return size

    def summary(self, last: dict[str, Any] | None = None) -> str:
        """One line: search and final runs done / total over all units, elapsed time, ETA, the latest result."""
        searches = finals = searches_total = remaining = 0
        for unit in self.units:
            states = self.search_study(unit).states()
            done = sum(s in ("complete", "diverged") for s in states.values())
            searches += done
            searches_total += len(states)
            remaining += (len(states) - done) * self.preset_for(unit).search_epochs
            final_done = self._final_done(unit)
            finals += final_done
            if "final" in self.stages and not final_done:
                remaining += self.schedule_epochs(unit)
        elapsed = time.monotonic() - self.started
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

    def finished(self) -> bool:
        """Everything asked for is done: every search point complete (or diverged) and, with the final stage, every
        unit's final run complete."""
        for unit in self.units:
            if any(s not in ("complete", "diverged") for s in self.search_study(unit).states().values()):
                return False
            if "final" in self.stages and not self._final_done(unit):
                return False
        return True

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
        folder = self.out / "runs" / unit.benchmark / unit.task.name / unit.method / f"seed{unit.seed}"
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
        claims = self.out / CLAIM_LOCK
        while search.run_pack(self.pack_size(unit), self._train(unit, "search"), self._announce, claims):
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
        while final.run_pack(1, self._train(unit, "final"), self._announce):
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


def expand_units(tasks: list[tuple[Task, str]], methods: list[str], seeds: list[int]) -> list[Unit]:
    """Units in task-major order (every method and seed of the first task before the next task), from each task and
    its data identity."""
    return [Unit(task, method, seed, data_id) for task, data_id in tasks for method in methods for seed in seeds]
