"""Protocol presets (`configs/protocol/*.yaml`): the training recipe, the search length and each method's grid."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..data.registry import BENCHMARKS

# The repository's configs/, shipped as the package `wegeft_vision.configs` (pip installs it as files on disk, so the
# presets' relative paths, e.g. `../fit/demo.yaml`, resolve inside the installed package).
CONFIG_DIR = Path(str(files("wegeft_vision.configs")))
KEYS = {"name", "base", "fit_config", "search_epochs", "final_includes_val", "seeds", "tasks", "synthetic", "methods"}
KEYS |= {"overrides", "benchmarks", "selection", "slurm"}
GRID_KEYS = {"config", "lr", "weight_decay", "overrides"}
BENCHMARK_KEYS = {"search_epochs", "methods", "overrides"}  # what a `benchmarks: {NAME: ...}` entry may change
SELECTION_RULES = ("last", "best")
# Settings that say where or how data is held, never what a run computes (the cached loader serves the very batches
# of the decoding one): left out of the fingerprint and of a run's identity, so moving them keeps the results.
LOCAL_SETTINGS = ("data.cache_dir", "data.cache_device")


def result_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that can change a result (all but `LOCAL_SETTINGS`)."""
    return {k: v for k, v in overrides.items() if k not in LOCAL_SETTINGS}


@dataclass(frozen=True)
class MethodGrid:
    """One method of a protocol: its preset file, the lr x weight-decay grid searched for it, and recipe settings
    of its own (`section.key: value` over the preset's, e.g. `model.pretrained: false` for a random-init control)."""

    config: Path
    lr: tuple[float, ...]
    weight_decay: tuple[float, ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def points(self) -> list[tuple[float, float]]:
        """The grid in search order: lr-major, as listed (also the tie-break order of the selection)."""
        return [(lr, wd) for lr in self.lr for wd in self.weight_decay]


@dataclass(frozen=True)
class ProtocolPreset:
    """A resolved protocol preset.

    Attributes:
        name: the preset's name, recorded in every result row.
        path: the YAML file it came from.
        fit_config: the LightningCLI config of the training recipe (`configs/fit/*.yaml`).
        search_epochs: search runs stop after this many epochs of the full schedule.
        final_includes_val: FGVC final runs train on train+val.
        seeds: default seeds.
        methods: method label -> grid.
        tasks: default `benchmark/name` targets (the smoke preset's synthetic tasks).
        synthetic: how to generate the synthetic tasks when no data root is given.
        overrides: `section.key: value` settings applied on top of `fit_config`.
        selection: how a search run is scored: its validation top-1 at the `last` search epoch, or the `best` over
            its search epochs (validated every epoch either way; both are recorded).
        benchmarks: per benchmark (`vtab-1k`, `fgvc`), what differs from the above: `search_epochs`, `overrides`
            (merged), and per method `lr`, `weight_decay`, `overrides`; `for_benchmark` applies them. Tasks of
            other benchmarks (folders of one's own, synthetic tasks) use the values above.
        slurm: sbatch options of `--launcher slurm` jobs (`partition`, `time`, `gpus_per_node`, ...), under the
            command line's `--slurm KEY=VALUE`; where jobs run never changes a result, so not in the fingerprint.
    """

    name: str
    path: Path
    fit_config: Path
    search_epochs: int
    final_includes_val: bool
    seeds: tuple[int, ...]
    methods: dict[str, MethodGrid]
    tasks: tuple[str, ...] = ()
    synthetic: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    selection: str = "last"
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)

    def for_benchmark(self, benchmark: str) -> ProtocolPreset:
        """The preset as it applies to tasks of `benchmark` (its `benchmarks` entry applied; none left)."""
        entry = self.benchmarks.get(benchmark)
        if not entry:
            return replace(self, benchmarks={})
        methods = dict(self.methods)
        for label, changes in (entry.get("methods") or {}).items():
            grid = methods[label]
            methods[label] = replace(
                grid,
                lr=changes.get("lr", grid.lr),
                weight_decay=changes.get("weight_decay", grid.weight_decay),
                overrides={**grid.overrides, **changes.get("overrides", {})},
            )
        return replace(
            self,
            search_epochs=entry.get("search_epochs", self.search_epochs),
            overrides={**self.overrides, **entry.get("overrides", {})},
            methods=methods,
            benchmarks={},
        )

    def fingerprint(self) -> str:
        """A digest of everything that changes a result: the recipe files, overrides, search length and grids."""
        content = {
            "fit_config": self.fit_config.read_text(),
            "overrides": result_settings(self.overrides),
            **({"selection": self.selection} if self.selection != "last" else {}),
            **({"benchmarks": self.benchmarks} if self.benchmarks else {}),
            "search_epochs": self.search_epochs,
            "final_includes_val": self.final_includes_val,
            "methods": {
                label: [
                    grid.config.read_text(),
                    grid.lr,
                    grid.weight_decay,
                    *([grid.overrides] if grid.overrides else []),
                ]
                for label, grid in self.methods.items()
            },
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def preset_path(ref: str | Path) -> Path:
    """A preset file from a path or a bundled preset's name (`paper`, `paper_text`, `smoke`)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        return path
    bundled = CONFIG_DIR / "protocol" / f"{ref}.yaml"
    if not bundled.is_file():
        names = sorted(p.stem for p in (CONFIG_DIR / "protocol").glob("*.yaml"))
        raise FileNotFoundError(f"no protocol preset {ref!r}; bundled presets: {', '.join(names)} (or a YAML path)")
    return bundled


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"protocol preset {path} does not exist")
    if path.resolve() in seen:
        raise ValueError(f"protocol preset {path}: `base` chain loops back to itself")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"protocol preset {path}: expected a mapping at the top level")
    unknown = set(raw) - KEYS
    if unknown:
        raise ValueError(f"protocol preset {path}: unknown keys {sorted(unknown)}; expected {sorted(KEYS)}")
    for key in ("fit_config",):
        if key in raw:
            raw[key] = (path.parent / raw[key]).resolve()
    for grid in (raw.get("methods") or {}).values():
        if isinstance(grid, dict) and "config" in grid:
            grid["config"] = (path.parent / grid["config"]).resolve()
    if "base" not in raw:
        return raw
    base = _read(path.parent / raw.pop("base"), (*seen, path.resolve()))
    overrides = {**base.get("overrides", {}), **raw.pop("overrides", {})}
    benchmarks = {**base.get("benchmarks", {}), **raw.pop("benchmarks", {})}
    return {**base, **raw, "overrides": overrides, "benchmarks": benchmarks}


def _grid(where: str, label: str, raw: Any) -> MethodGrid:
    if not isinstance(raw, dict) or not {"config", "lr", "weight_decay"} <= set(raw) <= GRID_KEYS:
        raise ValueError(
            f"{where}: method {label!r} needs `config`, `lr` and `weight_decay` (and optionally `overrides`)"
        )
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and "." in k for k in overrides):
        raise ValueError(f"{where}: method {label!r}: overrides should map `section.key` to values, got {overrides!r}")
    if not raw["config"].is_file():
        raise FileNotFoundError(f"{where}: method {label!r}: config {raw['config']} does not exist")
    values = {key: _values(where, label, key, raw[key]) for key in ("lr", "weight_decay")}
    return MethodGrid(raw["config"], values["lr"], values["weight_decay"], dict(overrides))


def _values(where: str, label: str, key: str, raw: Any) -> tuple[float, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(v, int | float) and v >= 0 for v in items) or len(set(items)) != len(items):
        raise ValueError(f"{where}: method {label!r}: {key} should be distinct non-negative numbers, got {raw}")
    return tuple(float(v) for v in items)


def _benchmarks(where: str, raw: Any, methods: dict[str, MethodGrid]) -> dict[str, dict[str, Any]]:
    """Check the `benchmarks` section; lr and weight-decay lists become tuples as in `MethodGrid`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: benchmarks should map a benchmark to its settings, got {raw!r}")
    checked: dict[str, dict[str, Any]] = {}
    for benchmark, entry in raw.items():
        here = f"{where}: benchmarks.{benchmark}"
        if benchmark not in BENCHMARKS:
            raise ValueError(f"{here}: unknown benchmark; expected one of {list(BENCHMARKS)}")
        if not isinstance(entry, dict) or not set(entry) <= BENCHMARK_KEYS:
            raise ValueError(f"{here}: expected a mapping with keys among {sorted(BENCHMARK_KEYS)}, got {entry!r}")
        epochs = entry.get("search_epochs", 1)
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"{here}.search_epochs should be a positive integer, got {epochs!r}")
        grids: dict[str, dict[str, Any]] = {}
        for label, changes in (entry.get("methods") or {}).items():
            if label not in methods:
                raise ValueError(f"{here}.methods: {label!r} is not a method of the preset ({list(methods)})")
            if not isinstance(changes, dict) or not set(changes) <= GRID_KEYS - {"config"}:
                raise ValueError(f"{here}.methods.{label}: expected lr, weight_decay or overrides, got {changes!r}")
            grids[label] = {k: _values(here, label, k, v) if k != "overrides" else dict(v) for k, v in changes.items()}
        checked[benchmark] = {**entry, "methods": grids, "overrides": dict(entry.get("overrides") or {})}
    return checked


def load_preset(ref: str | Path) -> ProtocolPreset:
    """Read a protocol preset (following its `base` chain), check it and resolve its paths.

    Raises:
        FileNotFoundError: the preset, its fit config or a method config does not exist.
        ValueError: an unknown or missing key, or a malformed grid; the message names the file and the key.
    """
    path = preset_path(ref)
    raw = _read(path)
    where = f"protocol preset {path}"
    for key in ("name", "fit_config", "search_epochs", "methods"):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r}")
    if not raw["fit_config"].is_file():
        raise FileNotFoundError(f"{where}: fit_config {raw['fit_config']} does not exist")
    if not isinstance(raw["search_epochs"], int) or raw["search_epochs"] < 1:
        raise ValueError(f"{where}: search_epochs should be a positive integer, got {raw['search_epochs']!r}")
    if not isinstance(raw["methods"], dict) or not raw["methods"]:
        raise ValueError(f"{where}: methods should map labels to grids")
    if raw.get("selection", "last") not in SELECTION_RULES:
        raise ValueError(f"{where}: selection should be one of {SELECTION_RULES}, got {raw['selection']!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{where}: seeds should be a list of integers, got {seeds!r}")
    methods = {label: _grid(where, label, grid) for label, grid in raw["methods"].items()}
    return ProtocolPreset(
        name=str(raw["name"]),
        path=path,
        fit_config=raw["fit_config"],
        search_epochs=raw["search_epochs"],
        final_includes_val=bool(raw.get("final_includes_val", False)),
        seeds=tuple(seeds),
        methods=methods,
        tasks=tuple(raw.get("tasks") or ()),
        synthetic=dict(raw.get("synthetic") or {}),
        overrides=dict(raw.get("overrides") or {}),
        selection=raw.get("selection", "last"),
        benchmarks=_benchmarks(where, raw.get("benchmarks") or {}, methods),
        slurm=_slurm(where, raw.get("slurm") or {}),
    )


def _slurm(where: str, options: Any) -> dict[str, Any]:
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"{where}: slurm should map sbatch option names to values, got {options!r}")
    return {k.replace("-", "_"): v for k, v in options.items()}
