"""Starting a protocol: every input checked before anything is pinned or trained, then `OUT/protocol.json` pinned.

Order matters: options, preset, methods, tasks, data, storage URL and the run configurations are all checked first,
so that a corrected command runs in the same `--out`. Only then is `protocol.json` written (or compared with the one
there: a run folder holds the results of one preset and its settings only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..data.folders import MANIFEST_FILE, open_folder
from ..data.registry import CUSTOM, FGVC_DATASETS, VTAB_TASKS
from .files import write_atomic
from .preset import ProtocolPreset, load_preset
from .runner import STAGES, Protocol, TaskData, expand_units, prepare_data, resolve_tasks
from .runs import check_overrides

PROTOCOL_FILE = "protocol.json"


@dataclass(frozen=True)
class Request:
    """What a `protocol` or `search` command asks for (see `wegeft-vision protocol --help` for each option).

    Attributes:
        preset: a preset name (`paper`, `paper_text`, `smoke`, `demo`) or YAML file.
        out: the run folder.
        benchmark, tasks, methods, seeds: what to run (None: the preset's).
        data_root, splits_dir: where the data lies.
        storage: Optuna storage URL (None: SQLite in `out`).
        overrides: `section.key: value` recipe settings on top of the preset's.
        final_includes_val: FGVC final on train+val (None: the preset's).
        stages: `("search",)` for search-only workers.
        devices: devices per run; progress, poll, heartbeat, checkpoint_every: see `Protocol`.
    """

    preset: str | Path
    out: Path
    benchmark: str | None = None
    tasks: list[str] | None = None
    methods: list[str] | None = None
    seeds: list[int] | None = None
    data_root: Path | None = None
    splits_dir: Path | None = None
    storage: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    final_includes_val: bool | None = None
    stages: tuple[str, ...] = STAGES
    devices: int = 1
    progress: bool = True
    poll: float = 30.0
    heartbeat: int = 60
    checkpoint_every: int = 1


def check_storage_url(url: str | None) -> None:
    """Refuse a storage URL that no storage could open, naming it (before anything is written).

    Raises:
        ValueError: a malformed URL, an unknown database scheme, or a journal file in a folder that does not exist.
    """
    if url is None:
        return
    if url.startswith("journal:"):
        folder = Path(url.removeprefix("journal:")).expanduser().parent
        if not folder.is_dir():
            raise ValueError(f"--storage {url}: folder {folder} of the journal file does not exist")
        return
    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise ValueError(
            f"--storage {url}: not a storage URL this toolkit can open ({error}); expected sqlite:///PATH, "
            "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal:PATH"
        ) from error


def _checked(request: Request) -> tuple[ProtocolPreset, list[str], list[tuple[str, str]]]:
    """The preset with the request's settings, the methods and the `(benchmark, task)` pairs, all checked."""
    if request.devices < 1:
        raise ValueError(f"--devices should be at least 1, got {request.devices}")
    if request.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every should be at least 1, got {request.checkpoint_every}")
    check_storage_url(request.storage)
    preset = load_preset(request.preset)
    check_overrides(request.overrides, "--set")
    check_overrides(preset.overrides, f"preset {preset.path}: override")
    for label, grid in preset.methods.items():
        check_overrides(grid.overrides, f"preset {preset.path}: method {label}: override")
    for benchmark, entry in preset.benchmarks.items():
        where = f"preset {preset.path}: benchmarks.{benchmark}"
        check_overrides(entry["overrides"], f"{where}: override")
        for label, changes in entry["methods"].items():
            check_overrides(changes.get("overrides", {}), f"{where}: method {label}: override")
    preset = replace(preset, overrides={**preset.overrides, **request.overrides})
    if request.final_includes_val is not None:
        preset = replace(preset, final_includes_val=request.final_includes_val)
    methods = request.methods or list(preset.methods)
    unknown = [m for m in methods if m not in preset.methods]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r} for preset {preset.name}; expected one of {list(preset.methods)}"
        )
    return preset, methods, resolve_tasks(request.benchmark, request.tasks, preset)


def _protocol(request: Request, preset: ProtocolPreset, units: list, data_root: Path | None, broken=None) -> Protocol:
    return Protocol(
        preset,
        units,
        request.out,
        data_root,
        splits_dir=request.splits_dir,
        storage=request.storage,
        stages=request.stages,
        devices=request.devices,
        progress=request.progress,
        poll=request.poll,
        heartbeat=request.heartbeat,
        checkpoint_every=request.checkpoint_every,
        broken=broken,
    )


def prepare(request: Request) -> Protocol:
    """Check every input and build the `Protocol`, pinning and training nothing (synthetic tasks are written).

    Raises:
        ValueError, FileNotFoundError: an input that cannot work; the message names the option, file or value.
    """
    preset, methods, pairs = _checked(request)
    if request.data_root is not None and not request.data_root.is_dir():
        raise FileNotFoundError(f"--data-root {request.data_root} does not exist")
    data_root = request.data_root or (request.out / "data" if preset.synthetic else None)
    tasks, broken = prepare_data(pairs, data_root, preset, request.splits_dir)
    if not tasks:
        raise ValueError("no task can run: " + "; ".join(f"{task}: {why}" for task, why in broken.items()))
    units = expand_units(tasks, methods, list(request.seeds or preset.seeds))
    protocol = _protocol(request, preset, units, data_root, broken)
    protocol.check_configurations()
    if not protocol.units:
        raise ValueError("no task can run: " + "; ".join(f"{t}: {why}" for t, why in protocol.broken.items()))
    return protocol


def prepare_plan(request: Request) -> Protocol:
    """The `Protocol` of a dry run: inputs checked as by `prepare`, but no data is read or written (registry tasks
    need none; a folder of one's own is described by its manifest) and no storage is opened.

    Raises:
        ValueError: a task the plan cannot describe without its data (a synthetic task not written yet).
    """
    preset, methods, pairs = _checked(request)
    tasks = []
    for benchmark, task in pairs:
        if benchmark == CUSTOM:
            tasks.append(TaskData(CUSTOM, open_folder(task).name, str(Path(task) / MANIFEST_FILE), task))
        elif task in VTAB_TASKS or task in FGVC_DATASETS:
            tasks.append(TaskData(benchmark, task))
        else:
            raise ValueError(f"--dry-run plans registry tasks and folders of one's own; {benchmark}/{task} is neither")
    units = expand_units(tasks, methods, list(request.seeds or preset.seeds))
    return _protocol(request, preset, units, request.data_root or Path("DATA_ROOT"))


def pin(protocol: Protocol) -> None:
    """Write `OUT/protocol.json` (the preset, its fingerprint, overrides, storage) or check the one there.

    Raises:
        ValueError: the run folder was started with another preset or other settings.
    """
    preset, path = protocol.preset, protocol.out / PROTOCOL_FILE
    record = {
        "preset": preset.name,
        "preset_file": str(preset.path),
        "fingerprint": preset.fingerprint(),
        "overrides": preset.overrides,
        "final_includes_val": preset.final_includes_val,
        "storage": protocol.storage_url,
    }
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") != record["fingerprint"]:
            raise ValueError(
                f"{path} was written by preset {saved.get('preset')!r} with other settings (recipe, overrides, grids "
                "or search length differ); results would not be comparable: use another --out"
            )
        return
    protocol.out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1))
