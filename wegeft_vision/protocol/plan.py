"""`protocol --dry-run`: every run a protocol would train, resolved as the runs resolve it, and what it costs.

Each planned run is the configuration its run would train (`training.run_config.RunConfig`, parsed: nothing
built, no data read, no weights loaded), so the plan shows the values training would use: schedule, batch, splits,
the preprocessing pipelines (torchvision's repr), every method hyper-parameter, which tensors get no weight decay,
precision. Split sizes come from the registry (a folder of one's own: its manifest). The cost is the total number
of training images seen, summed over runs (image-epochs). With `--pack K` each search run names its pack (the runs
trained together in one forward/backward) and the summary adds the packed cost: trainings, and image-epochs of data
passes, which a pack makes once for its K points (its adapted layers still compute K times).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .runner import Protocol

NO_DECAY_RULE = "1-D tensors, biases and PaCa's cluster map (ndim <= 1, name ends with .bias, or a cluster module)"


def plan_runs(protocol: Protocol) -> list[dict[str, Any]]:
    """One entry per planned run, in the order the protocol takes them (a final's lr and weight decay are chosen by
    the search: None here)."""
    runs: list[dict[str, Any]] = []
    described: dict[tuple[str, str, str], dict[str, Any]] = {}
    for unit in protocol.units:
        grid = protocol.preset_for(unit).methods[unit.method]
        task = unit.task
        sizes = task.split_sizes()
        for stage in protocol.stages:
            key = (task.benchmark, task.layout, unit.method, stage)
            if key not in described:  # the recipe is the same for every task of a benchmark and layout
                described[key] = _describe(protocol.sample_config(unit, stage), task.layout)
            train_splits, eval_split = task.stage_splits(stage, protocol.preset.final_includes_val)
            base = {
                "benchmark": task.benchmark,
                "task": task.name,
                "method": unit.method,
                "stage": stage,
                "seed": unit.seed,
                **described[key],
                "train_split": "+".join(train_splits),
                "eval_split": eval_split,
                "train_images": sum(sizes.get(s, 0) for s in train_splits),
                "eval_images": sizes.get(eval_split, 0),
                "selection": protocol.preset.selection if stage == "search" else None,
            }
            points = grid.points if stage == "search" else [(None, None)]
            size = _pack_size(protocol, unit) if stage == "search" else 1
            runs += [
                {**base, "lr": lr, "weight_decay": wd, "pack": f"{i // size + 1}/{-(-len(points) // size)}"}
                for i, (lr, wd) in enumerate(points)
            ]
    return runs


def _pack_size(protocol: Protocol, unit: Any) -> int:
    """The points a search pack holds: `--pack K` (at most the grid; 1 for a method that cannot pack); `auto` is
    measured when training starts, so the plan counts it unpacked."""
    return 1 if protocol.pack == "auto" else protocol.pack_size(unit)


def _describe(config: Any, layout: str) -> dict[str, Any]:
    """What a run's configuration sets, as training will use it (`RunConfig`'s typed views)."""
    model = config.resolved.model
    prep = config.preprocessing(layout)
    return {
        "epochs": config.epochs,
        "schedule_epochs": config.schedule_epochs,
        "warmup_epochs": model.warmup_epochs,
        "lr_schedule": f"cosine to {model.min_lr:g}, warmup from {model.warmup_lr:g} (per epoch)",
        "batch_size": config.batch_size,
        "train_transform": repr(prep.pipeline(train=True)),
        "eval_transform": repr(prep.pipeline(train=False)),
        "preprocessing": prep.describe(train=True),
        "backbone": config.backbone,
        "drop_path": model.drop_path,
        "method_config": config.method_config.to_dict(),
        "no_weight_decay": NO_DECAY_RULE if model.no_decay_1d_and_bias else "none",
        "precision": config.precision,
    }


def cost(runs: list[dict[str, Any]]) -> int:
    """Training images seen by the whole plan (image-epochs)."""
    return sum(run["epochs"] * run["train_images"] for run in runs)


def summary(runs: list[dict[str, Any]]) -> str:
    """The plan as a table: per task and method, the grid, runs, epochs, batch, splits, preprocessing, precision."""
    lines = ["| task | method | stage | runs | epochs (of) | batch | splits | preprocessing | precision |"]
    lines.append("|---|---|---|---:|---|---:|---|---|---|")
    seen: dict[tuple[str, ...], int] = {}
    for run in runs:
        key = (f"{run['benchmark']}/{run['task']}", run["method"], run["stage"])
        seen[key] = seen.get(key, 0) + 1
    first = {}
    for run in runs:
        first.setdefault((f"{run['benchmark']}/{run['task']}", run["method"], run["stage"]), run)
    for key, count in seen.items():
        run = first[key]
        epochs = f"{run['epochs']} ({run['schedule_epochs']}, warmup {run['warmup_epochs']})"
        splits = f"{run['train_split']} -> {run['eval_split']}"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {count} | {epochs} | {run['batch_size']} | {splits} | "
            f"{run['preprocessing'].split(':')[0]} | {run['precision']} |"
        )
    total = cost(runs)
    lines.append("")
    lines.append(f"{len(runs)} runs, {total:,} image-epochs in all (final runs' lr and weight decay: chosen by search)")
    packs = {}
    for run in runs:
        key = (run["benchmark"], run["task"], run["method"], run["seed"], run["pack"])
        packs.setdefault(key if run["stage"] == "search" else (id(run),), run)  # a final is a training of its own
    if len(packs) < len(runs):
        passes = cost(list(packs.values()))
        lines.append(
            f"packed: {len(packs)} trainings, {passes:,} image-epochs of data passes (each pack's points share its "
            f"images and the frozen layers before the first adapted one)"
        )
    return "\n".join(lines)


def write_plan(runs: list[dict[str, Any]], out: Path) -> Path:
    """`OUT/plan.json`: the planned runs."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    write_atomic(path, json.dumps(runs, indent=1))
    return path
