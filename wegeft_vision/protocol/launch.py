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

from .files import write_atomic
from .preset import load_preset
from .runner import STAGES, Protocol, expand_units, prepare_data, resolve_tasks
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


def prepare(request: Request) -> Protocol:
    """Check every input and build the `Protocol`, pinning and training nothing (synthetic tasks are written).

    Raises:
        ValueError, FileNotFoundError: an input that cannot work; the message names the option, file or value.
    """
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
    preset = replace(preset, overrides={**preset.overrides, **request.overrides})
    if request.final_includes_val is not None:
        preset = replace(preset, final_includes_val=request.final_includes_val)
    methods = request.methods or list(preset.methods)
    unknown = [m for m in methods if m not in preset.methods]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r} for preset {preset.name}; expected one of {list(preset.methods)}"
        )
    pairs = resolve_tasks(request.benchmark, request.tasks, preset)
    if request.data_root is not None and not request.data_root.is_dir():
        raise FileNotFoundError(f"--data-root {request.data_root} does not exist")
    data_root = request.data_root or (request.out / "data" if preset.synthetic else None)
    tasks, broken = prepare_data(pairs, data_root, preset, request.splits_dir)
    if not tasks:
        raise ValueError("no task can run: " + "; ".join(f"{task}: {why}" for task, why in broken.items()))
    protocol = Protocol(
        preset,
        expand_units(tasks, methods, list(request.seeds or preset.seeds)),
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
    protocol.check_configurations()
    if not protocol.units:
        raise ValueError("no task can run: " + "; ".join(f"{t}: {why}" for t, why in protocol.broken.items()))
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
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") != record["fingerprint"]:
            raise ValueError(
                f"{path} was written by preset {saved.get('preset')!r} with other settings (recipe, overrides, grids "
                "or search length differ); results would not be comparable: use another --out"
            )
        return
    protocol.out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1))
