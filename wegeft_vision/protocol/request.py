"""What a `protocol` or `search` command asks for, as one typed object: `launch.run` trains it, `workers` hands it to
worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("search", "final")


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
        devices: devices per run; progress, poll, heartbeat, checkpoint_every, announce, pack: see `Protocol`.
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
    announce: bool = False
    pack: int | str = 1
