"""Starting a protocol: every input checked before anything is pinned or trained, then `OUT/protocol.json` pinned.

Order matters: options, preset, methods, tasks, data, storage URL and the run configurations are all checked first,
so that a corrected command runs in the same `--out`. Only then is `protocol.json` written (or compared with the one
there: a run folder holds the results of one preset and its settings only).
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..data.lookup import find_task, locate_task, task_refs
from ..data.registry import CUSTOM
from ..data.tasks import Task
from ..files import write_atomic
from ..training.run_config import check_overrides
from . import preemption
from .optuna_compat import check_version
from .preset import ProtocolPreset, load_preset
from .request import Request
from .runner import Protocol, expand_units
from .setups import check_chosen_backbone

PROTOCOL_FILE = "protocol.json"


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
    if request.pack != "auto" and (not isinstance(request.pack, int) or request.pack < 1):
        raise ValueError(f"--pack should be a number >= 1 or auto, got {request.pack!r}")
    taken = next((p for p in (request.out, *request.out.parents) if p.exists() and not p.is_dir()), None)
    if taken is not None:
        raise NotADirectoryError(f"--out {request.out}: {taken} is a file, not a folder (give a folder for the run)")
    check_storage_url(request.storage)
    check_version()  # an Optuna this toolkit's storages do not support: refused before anything is pinned
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
    names = request.tasks or list(preset.tasks)
    if not names:
        raise ValueError(f"no --tasks given and preset {preset.name!r} names none")
    return preset, methods, task_refs(names, request.benchmark)


def prepare_tasks(
    refs: list[tuple[str, str]], data_root: Path | None, preset: ProtocolPreset, splits_dir: Path | None = None
) -> tuple[list[tuple[Task, str]], dict[str, str]]:
    """Checks every task's data before any training (`data.lookup.find_task`: registry folders under the data root,
    manifests of other tasks, synthetic tasks written when missing, folders of one's own described on first use) and
    reads the split files behind each task's data identity.

    Returns:
        The tasks that are ready with their data identity, and per broken task (`benchmark/name`) what is wrong with
        it: a broken task does not stop the others.

    Raises:
        ValueError: `--data-root` missing for registry tasks, or two task folders of the same name.
    """
    prepared: list[tuple[Task, str]] = []
    broken: dict[str, str] = {}
    for benchmark, name in refs:
        try:
            task = find_task(benchmark, name, data_root, splits_dir, preset.synthetic)
            clash = [t for t, _ in prepared if t.ref == task.ref]
            if clash:
                raise _Clash(f"task folders {clash[0].root} and {task.root} share the name {task.name!r}")
            prepared.append((task, task.identity()))
        except (OSError, ValueError, KeyError) as error:
            if data_root is None and benchmark != CUSTOM or isinstance(error, _Clash):
                raise
            broken[f"{benchmark}/{Path(name).name if benchmark == CUSTOM else name}"] = " ".join(str(error).split())
    return prepared, broken


class _Clash(ValueError):
    """Two task folders of the same name: the command line is wrong, not a task."""


def pinned_storage(out: Path) -> str | None:
    """The storage URL `OUT/protocol.json` records (None: none named, or no readable record; `pin` names damage)."""
    try:
        record = json.loads((out / PROTOCOL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("storage") if isinstance(record, dict) else None


def _protocol(request: Request, preset: ProtocolPreset, units: list, broken=None) -> Protocol:
    return Protocol(
        preset,
        units,
        request.out,
        storage=request.storage or pinned_storage(request.out),  # a run folder keeps the storage it started with
        stages=request.stages,
        devices=request.devices,
        progress=request.progress,
        poll=request.poll,
        heartbeat=request.heartbeat,
        checkpoint_every=request.checkpoint_every,
        broken=broken,
        announce=request.announce,
        pack=request.pack,
    )


def prepare(request: Request) -> Protocol:
    """Check every input and build the `Protocol`, pinning and training nothing (synthetic tasks are written).

    Raises:
        ValueError, FileNotFoundError: an input that cannot work; the message names the option, file or value. Also
            a `--backbone` the recipe would not train as named (`setups.check_chosen_backbone`) and an `OUT/results.csv`
            row that disagrees with its run's `result.json` (`Protocol.check_results`).
    """
    preset, methods, pairs = _checked(request)
    if request.data_root is not None and not request.data_root.is_dir():
        raise FileNotFoundError(f"--data-root {request.data_root} does not exist")
    data_root = request.data_root or (request.out / "data" if preset.synthetic else None)
    tasks, broken = prepare_tasks(pairs, data_root, preset, request.splits_dir)
    if not tasks:
        raise ValueError("no task can run: " + "; ".join(f"{task}: {why}" for task, why in broken.items()))
    units = expand_units(tasks, methods, list(request.seeds or preset.seeds))
    protocol = _protocol(request, preset, units, broken)
    protocol.check_configurations()
    if not protocol.units:
        raise ValueError("no task can run: " + "; ".join(f"{t}: {why}" for t, why in protocol.broken.items()))
    check_chosen_backbone(protocol, request.overrides)
    protocol.check_results()  # before any worker appends to it
    return protocol


def prepare_plan(request: Request) -> Protocol:
    """The `Protocol` of a dry run: inputs checked as by `prepare`, but no data is read or written (registry tasks
    need none; a folder of one's own, or a task with its own manifest, is described by it; a synthetic task not
    written yet, by the preset's `synthetic` options) and no storage is opened.

    Raises:
        FileNotFoundError: a task outside the registry that has no manifest to describe it.
        ValueError: a configuration or method preset that a run would refuse (as `prepare`).
    """
    preset, methods, pairs = _checked(request)
    data_root = request.data_root or (request.out / "data" if preset.synthetic else Path("DATA_ROOT"))
    tasks = [(locate_task(*pair, data_root, request.splits_dir, preset.synthetic), "") for pair in pairs]
    units = expand_units(tasks, methods, list(request.seeds or preset.seeds))
    protocol = _protocol(request, preset, units)
    protocol.check_configurations()  # what a run would refuse, the plan refuses: configurations and methods
    if protocol.broken:
        raise ValueError("; ".join(f"{task}: {why}" for task, why in protocol.broken.items()))
    check_chosen_backbone(protocol, request.overrides)
    return protocol


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
        try:
            saved = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is damaged ({err}); it is written whole, so something changed it since: restore it, or run "
                "in another --out"
            ) from err
        if not isinstance(saved, dict):
            raise ValueError(
                f"{path} should hold a JSON object, got {type(saved).__name__}: restore it, or use another --out"
            )
        if saved.get("fingerprint") != record["fingerprint"]:
            raise ValueError(
                f"{path} was written by preset {saved.get('preset')!r} with other settings (recipe, overrides, grids "
                "or search length differ); results would not be comparable: use another --out"
            )
        return
    protocol.out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1))


def run(
    request: Request, workers: int = 1, gpus: str | None = None, signals: Sequence[signal.Signals] = (signal.SIGTERM,)
) -> int:
    """Check every input, pin `OUT/protocol.json`, then train everything asked for: in this process, or in `workers`
    worker processes (with `gpus`, one per group of `request.devices` GPUs) sharing the study storage. Training here,
    each of `signals` stops the worker cleanly (`preemption`: its grid point given back, `preemption.Preempted`
    raised); a SLURM job's worker also stops on the warning signals.

    Returns:
        0 when everything asked for is done, 1 when some unit failed or some task was left out (listed), the
        workers' highest exit code otherwise.

    Raises:
        ValueError, FileNotFoundError: an input that cannot work (nothing pinned); the message names it.
    """
    from .workers import gpu_groups, spawn_workers

    if workers < 1:
        raise ValueError(f"--workers should be at least 1, got {workers}")
    groups = gpu_groups(gpus, request.devices)
    protocol = prepare(request)  # every input checked: nothing written yet but synthetic tasks
    pin(protocol)
    if workers > 1 or groups:
        protocol.storage  # noqa: B018 - the schema created once, before the workers race to create it
        return spawn_workers(request, workers, groups)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with preemption.stopping_on(signals):
        return protocol.run()
