"""Paper-style tables from the protocol's `results.csv` files (written by `protocol.report_files`).

VTAB-1k columns follow the paper: the Natural, Specialized and Structured tasks, each group's mean, and `Mean`, the
mean of the three group means. Tasks outside the registry given by name (synthetic data) are listed last, in no mean.
Folders of one's own (benchmark `custom`) get a table of their own, grouped by their manifests' `group` when they have
one (each group's mean, then `Mean` of the group means), else with `Mean` over the tasks. Diverged runs are listed
under their table and counted in no cell; rows that conflict for one run, or hold values out of range, are refused.
Rows of different setups (backbone, weights, preprocessing: `setups`) are never mixed: each setup has tables of its
own, named by it, and a random-init control goes with the pretrained rows of its architecture. Rows that disagree with
their run's `result.json` (a value edited by hand) are refused.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.registry import CUSTOM, FGVC, FGVC_DATASETS, STAGES, VTAB1K, VTAB_TASKS, fgvc_dataset, vtab_task
from .results import STATES, TornRowWarning, disagreement_message, disagreements, scan_file, torn_message
from .setups import random_init, setup_labels, split_setups

# column -> (type, the check of its value, what the message says is expected)
RANGES: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "lr": (float, lambda v: v > 0, "a number > 0"),
    "weight_decay": (float, lambda v: v >= 0, "a number >= 0"),
    "top1": (float, lambda v: 0 <= v <= 100, "a number in [0, 100] (empty only for a diverged run)"),
    "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "params": (int, lambda v: v >= 0, "an integer >= 0"),
}
REQUIRED_COLUMNS = ("benchmark", "task", "method", "stage", *RANGES, "backbone", "preset")
DEDUP_KEY = ("benchmark", "task", "method", "stage", "seed", "lr", "weight_decay")  # with `fingerprint`: results.KEY
RESULT_FIELDS = ("state", "top1", "params", "epochs", "backbone", "preset")  # must agree between rows of one run
BENCHMARK_TITLES = {VTAB1K: "VTAB-1k", FGVC: "FGVC", CUSTOM: "Your tasks"}
STAGE_TITLES = {"final": "test top-1 (final)", "search": "best validation top-1 (search)"}
VTAB_GROUPS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}
MEAN = "Mean"
PARAMS = "params (M)"
# what each run measured (`training.cost`), shown beside params: results column -> table column
COST = {"step_ms": "step (ms)", "images_per_s": "images/s", "peak_memory_mb": "peak MiB"}
PLOT_FLOOR = 1e-3  # millions of parameters; a linear probe (0) would vanish on a log axis
_BENCHMARK_ALIASES = {"vtab-1k": VTAB1K, "vtab1k": VTAB1K, "vtab": VTAB1K, "fgvc": FGVC, CUSTOM: CUSTOM}


@dataclass(frozen=True)
class Cell:
    """One table cell: the mean over seeds, the sample std (None for one seed and for averages of columns), seeds."""

    mean: float
    std: float | None = None
    n: int = 1


@dataclass
class MethodRow:
    """One method's line of a table; `cells` lacks the columns the method has no (complete) result for."""

    method: str
    params_m: float
    n_seeds: int
    cells: dict[str, Cell] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # COST column -> median over the method's measured runs


@dataclass
class Table:
    """One benchmark's table for one stage, with the notes, diverged runs and warnings that go under it."""

    benchmark: str
    stage: str
    columns: list[str]
    rows: list[MethodRow]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)  # "<task> <method> seed=.. lr=.. wd=..: <reason>"
    setup: str = ""  # the setup in words, when the rows hold several (`setups.setup_labels`)
    setup_slug: str = ""  # its part of the table's file names (`setups.Setup.slug`)

    @property
    def title(self) -> str:
        title = f"{BENCHMARK_TITLES[self.benchmark]}: {STAGE_TITLES[self.stage]}"
        return f"{title} — {self.setup}" if self.setup else title


def read_results(paths: str | Path | Iterable[str | Path]) -> list[dict]:
    """Read one or more results files, values parsed and checked, keeping each row's file and line (`_file`, `_line`).

    Torn rows (a crash mid-write, see `results.scan_text`) are no results: they are skipped with a `TornRowWarning`.
    A file without `state` holds finished runs; a `diverged` run has no `top1` (see `build_tables`).

    Args:
        paths: a results CSV file or several; the files' rows are concatenated in order.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is empty or lacks a required column, or a row holds an unknown benchmark or state or a
            value out of range (see `RANGES`), or differs from its run's `result.json` where the run folders are
            beside the file (`results.disagreements`); the message names the file, line and column.
    """
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"results file {path} not found")
        scan = scan_file(path)
        for line, _ in scan.torn:
            warnings.warn(torn_message(path, line, "skipped"), TornRowWarning, stacklevel=2)
        if not scan.header:
            state = "holds only a torn header" if scan.torn else "is empty"
            raise ValueError(f"results file {path} {state} (expected a header row: {', '.join(REQUIRED_COLUMNS)})")
        missing = [name for name in REQUIRED_COLUMNS if name not in scan.header]
        if missing:
            raise ValueError(f"results file {path} lacks the column(s) {', '.join(missing)}")
        rows.extend(_parse_row(dict(zip(scan.header, fields, strict=True)), path, line) for line, fields in scan.rows)
        if found := disagreements(path, scan):
            way_out = f"report refuses such a file: delete the line(s) and rerun the protocol on {path.parent}"
            raise ValueError(disagreement_message(path, found, f"{way_out}, which writes them again from the runs"))
    return rows


def _parse_row(row: dict, path: Path, line: int) -> dict:
    where = f"{path}, line {line}"
    parsed = dict(row)
    benchmark = _BENCHMARK_ALIASES.get((row["benchmark"] or "").strip().lower())
    if benchmark is None:
        raise ValueError(f"{where}: unknown benchmark {row['benchmark']!r}; expected vtab-1k, fgvc or {CUSTOM}")
    parsed["benchmark"] = benchmark
    state = (row.get("state") or "").strip() or "finished"  # files written before the column existed have none
    if state not in STATES:
        raise ValueError(f"{where}, column 'state': unknown state {row['state']!r}; expected {' or '.join(STATES)}")
    parsed["state"] = state
    for name, (kind, ok, expected) in RANGES.items():
        text = (row[name] or "").strip()
        if name == "top1" and state == "diverged":
            parsed[name] = None  # a diverged run has no accuracy, whatever the cell holds
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (kind is int and not value.is_integer()) or not ok(value):
            raise ValueError(f"{where}, column {name!r}: expected {expected}, got {text!r}")
        parsed[name] = kind(value)
    for name in ("group", "reason", "fingerprint", "backbone", "weights", "preprocessing"):
        parsed[name] = (row.get(name) or "").strip()
    parsed["_file"], parsed["_line"] = str(path), line
    return parsed


def _where(row: dict) -> str:
    return f"{row.get('_file', 'the results')}, line {row.get('_line', '?')}"


def deduplicate(rows: list[dict]) -> list[dict]:
    """One row per run: identical repeats of a run key (`results.KEY`) are dropped; of rows that share
    (benchmark, task, method, stage, seed, lr, weight_decay) under different fingerprints, the last is kept. Give it
    the rows of one setup (`setups.split_setups`): the last row of another backbone is no newer result.

    Raises:
        ValueError: two rows of one run key disagree on a result (`RESULT_FIELDS`); the message names both rows.
    """
    runs: dict[tuple, dict] = {}
    latest: dict[tuple, dict] = {}
    for row in rows:
        key = (*(row[name] for name in DEDUP_KEY), row.get("fingerprint", ""))
        if (first := runs.get(key)) is not None:
            differ = [name for name in RESULT_FIELDS if first.get(name) != row.get(name)]
            if differ:
                name = differ[0]
                run = " ".join(f"{n}={v}" for n, v in zip((*DEDUP_KEY, "fingerprint"), key, strict=True) if v != "")
                raise ValueError(
                    f"conflicting rows for the run {run}: {_where(first)} has {name}={first.get(name)!r} but "
                    f"{_where(row)} has {name}={row.get(name)!r}; keep one of them"
                )
            continue
        runs[key] = row
        short = key[:-1]
        latest.pop(short, None)  # re-insert, so a re-run takes the position of its latest row
        latest[short] = row
    return list(latest.values())


def build_tables(rows: list[dict], stage: str = "final") -> list[Table]:
    """One table per benchmark and setup present (VTAB-1k first, setups in order of appearance), after deduplication
    within each setup; where a benchmark's rows hold several setups, each of its tables names its own (`Table.setup`).

    Args:
        rows: rows from `read_results`.
        stage: `final` (per method and task, the mean over seeds of the test top-1; of several final rows for one
            seed, the last) or `search` (per seed the best validation top-1 over the grid, then the mean over seeds).

    A diverged run's row only lists it under the table (`Table.diverged`): its task and seed count as without result.

    Raises:
        ValueError: an unknown stage, no rows of that stage, or rows that conflict for one run (see `deduplicate`).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    parts: dict[str, dict] = {}  # benchmark -> setup -> its rows of that benchmark and stage
    for setup, members in split_setups(rows).items():
        staged = [row for row in deduplicate(members) if row["stage"] == stage]
        for benchmark in BENCHMARK_TITLES:
            if mine := [row for row in staged if row["benchmark"] == benchmark]:
                parts.setdefault(benchmark, {})[setup] = mine
    tables = []
    for benchmark in BENCHMARK_TITLES:
        setups = parts.get(benchmark, {})
        labels = setup_labels(setups) if len(setups) > 1 else {}  # a benchmark of one setup keeps its plain title
        for setup, mine in setups.items():
            named = (labels[setup], setup.slug) if labels else ("", "")
            tables.append(_build_table(mine, benchmark, stage, *named))
    if not tables:
        files = sorted({row["_file"] for row in rows if "_file" in row}) or ["the results"]
        hint = "; try --stage search" if stage == "final" else ""
        raise ValueError(f"no {stage} rows in {', '.join(files)} yet{hint}")
    return tables


def _canonical(benchmark: str, task: str) -> str:
    """The registry name of a task (aliases resolve; folders of one's own and unknown names stay as they are)."""
    if benchmark == CUSTOM:
        return task
    try:
        return (vtab_task(task) if benchmark == VTAB1K else fgvc_dataset(task)).name
    except ValueError:
        return task


def _custom_layout(groups: dict[str, str]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Columns of folder tasks: by group (VTAB-1k's group names first), each group's mean, then `Mean`."""
    order = [*VTAB_GROUPS, *sorted(set(groups.values()) - set(VTAB_GROUPS) - {""}), ""]
    present = [group for group in order if group in groups.values()]
    if present == [""]:
        tasks = sorted(groups)
        return [*tasks, MEAN], {MEAN: tasks}, []
    averages = {}
    for group in present:
        title = VTAB_GROUPS.get(group, group.capitalize() if group else "Ungrouped")
        averages[title] = sorted(task for task, g in groups.items() if g == group)
    columns = [name for title, members in averages.items() for name in (*members, title)]
    averages[MEAN] = list(averages)
    return [*columns, MEAN], averages, [f"{MEAN} is the mean of the group means."]


def _layout(benchmark: str, tasks: set[str]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Columns in display order, the averaged columns with their members (in computing order), and notes."""
    unit = "tasks" if benchmark == VTAB1K else "datasets"
    if benchmark == VTAB1K:
        registry = {name: VTAB_GROUPS[task.group] for name, task in VTAB_TASKS.items()}
        groups = {title: [name for name, group in registry.items() if group == title] for title in VTAB_GROUPS.values()}
        averages = {title: [name for name in members if name in tasks] for title, members in groups.items()}
        averages[MEAN] = list(VTAB_GROUPS.values())
    else:
        groups = {MEAN: list(FGVC_DATASETS)}
        averages = {MEAN: [name for name in FGVC_DATASETS if name in tasks]}
    columns, notes = [], []
    for title, members in averages.items():
        shown = [name for name in members if name in tasks or (name in averages and averages[name])]
        if not shown:
            continue
        columns += [name for name in members if name in tasks] + [title]
        if title in groups and len(shown) < len(groups[title]):
            notes.append(f"{title} averages the {len(shown)} of {len(groups[title])} {unit} present here.")
    if benchmark == VTAB1K and any(not averages[title] for title in VTAB_GROUPS.values()) and MEAN in columns:
        notes.append(f"{MEAN} needs all three group means; a group without results leaves it empty.")
    others = sorted(tasks - {name for members in groups.values() for name in members})
    if others:
        notes.append(f"Not in the registry, so in no mean: {', '.join(others)}.")
    return columns + others, averages, notes


def _build_table(rows: list[dict], benchmark: str, stage: str, setup: str = "", slug: str = "") -> Table:
    per_seed: dict[str, dict[str, dict[int, float]]] = {}  # method -> task -> seed -> top-1
    params: dict[str, list[int]] = {}
    costs: dict[str, dict[str, list[float]]] = {}
    tasks, groups, diverged = set(), {}, []
    for row in rows:
        task = _canonical(benchmark, row["task"])
        tasks.add(task)
        groups[task] = row["group"]
        scores = per_seed.setdefault(row["method"], {}).setdefault(task, {})
        params.setdefault(row["method"], []).append(row["params"])
        for column in COST:
            if row.get(column) not in (None, ""):
                costs.setdefault(row["method"], {}).setdefault(column, []).append(float(row[column]))
        costs.setdefault(row["method"], {})
        seed = row["seed"]
        if row.get("state", "finished") == "diverged":  # listed, never averaged: the task is left without this seed
            run = f"{task} {row['method']} seed={seed} lr={row['lr']:g} wd={row['weight_decay']:g}"
            diverged.append(f"{run}: {row.get('reason') or 'no reason recorded'}")
            continue
        scores[seed] = max(scores[seed], row["top1"]) if stage == "search" and seed in scores else row["top1"]
    columns, averages, notes = _custom_layout(groups) if benchmark == CUSTOM else _layout(benchmark, tasks)
    table_rows = []
    for method, by_task in per_seed.items():
        cells = {task: _cell(list(scores.values())) for task, scores in by_task.items() if scores}
        for title, members in averages.items():
            if members and all(name in cells for name in members):
                cells[title] = Cell(
                    statistics.fmean(cells[name].mean for name in members), None, _min_n(cells, members)
                )
        seeds = {seed for scores in by_task.values() for seed in scores}
        measured = {column: statistics.median(costs[method][column]) for column in COST if costs[method].get(column)}
        table_rows.append(MethodRow(method, statistics.fmean(params[method]) / 1e6, len(seeds), cells, measured))
        missing = [name for name in columns if name in tasks and name not in cells]
        if missing:
            notes.append(f"{method} has no result for {', '.join(missing)}.")
    shown = [c for c in columns if c in tasks]
    table = Table(benchmark, stage, columns, table_rows, notes, tasks=shown, setup=setup, setup_slug=slug)
    if diverged:
        table.notes.append("Diverged runs (listed below) count in no cell and no mean.")
        table.diverged = diverged
    controls = sorted({row["method"] for row in rows if random_init(row)})
    if controls:
        table.notes.append(
            f"On a randomly initialized backbone (a control, not compared for mixing): {', '.join(controls)}."
        )
    presets = sorted({row["preset"] for row in rows if row["preset"]})
    if len(presets) > 1:
        table.warnings.append(
            f"{table.title} mixes presets {', '.join(presets)}; these numbers are not comparable with each other."
        )
    return table


def _cell(values: list[float]) -> Cell:
    std = statistics.stdev(values) if len(values) > 1 else None
    return Cell(statistics.fmean(values), std, len(values))


def _min_n(cells: dict[str, Cell], members: list[str]) -> int:
    return min(cells[name].n for name in members)
