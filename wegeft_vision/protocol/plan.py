"""`protocol --dry-run`: every run a protocol would train, resolved as the runs resolve it, and what it costs.

Each planned run is the LightningCLI configuration its run would parse (the same arguments, `ParseOnlyCLI`: nothing
built, no data read, no weights loaded), so the plan shows the values training would use: schedule, batch, splits,
the preprocessing pipelines (torchvision's repr), every method hyper-parameter, which tensors get no weight decay,
precision. Split sizes come from the registry (a folder of one's own: its manifest). The cost is the total number
of training images seen, summed over runs (image-epochs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.folders import open_folder
from ..data.registry import CUSTOM, FGVC, VTAB1K, fgvc_dataset, protocol_splits, vtab_task
from ..data.transforms import backbone_data_config, preprocessing
from ..methods import config_from_spec
from .runner import Protocol, Unit
from .runs import _arguments

NO_DECAY_RULE = "1-D tensors, biases and PaCa's cluster map (ndim <= 1, name ends with .bias, or a cluster module)"


def _split_sizes(unit: Unit, layout: str) -> dict[str, int]:
    if unit.benchmark == VTAB1K:
        return vtab_task(unit.task).split_sizes
    if unit.benchmark == FGVC:
        return dict(fgvc_dataset(unit.task).split_sizes)
    manifest = open_folder(unit.data_root)
    return {name: entry.count for name, entry in manifest.splits.items()}


def _layout(unit: Unit) -> str:
    return open_folder(unit.data_root).layout if unit.benchmark == CUSTOM else unit.benchmark


def _resolved(protocol: Protocol, unit: Unit, stage: str, point: tuple[float, float]) -> Any:
    """The parsed LightningCLI configuration of one run (nothing instantiated)."""
    from ..training.cli import build_cli

    spec = protocol.spec(unit, stage, point)
    return build_cli(_arguments(spec, spec.run_dir(protocol.out)), instantiate=False).config


def _data_config(config: Any) -> dict[str, Any]:
    """The backbone's data config from timm's pretrained config (no weights), with an `img_size` override applied."""
    data_config = dict(backbone_data_config(config.model.backbone))
    size = (config.model.backbone_overrides or {}).get("img_size")
    if size:
        data_config["input_size"] = (3, int(size), int(size))
    return data_config


def plan_runs(protocol: Protocol) -> list[dict[str, Any]]:
    """One entry per planned run, in the order the protocol takes them (a final's lr and weight decay are chosen by
    the search: None here)."""
    runs: list[dict[str, Any]] = []
    resolved: dict[tuple[str, str, str], Any] = {}
    for unit in protocol.units:
        grid = protocol.preset_for(unit).methods[unit.method]
        layout = _layout(unit)
        sizes = _split_sizes(unit, layout)
        for stage in protocol.stages:
            key = (unit.benchmark if unit.benchmark != CUSTOM else unit.task, unit.method, stage)
            if key not in resolved:  # the recipe is the same for every task of a benchmark
                resolved[key] = _resolved(protocol, unit, stage, grid.points[0])
            config = resolved[key]
            model, data, trainer = config.model, config.data, config.trainer
            train_splits, eval_split = protocol_splits(layout, stage, data.final_includes_val)
            prep = preprocessing(data.preset, _data_config(config), layout)
            epochs = trainer.max_epochs if stage == "search" else model.epochs
            precision = str(trainer.precision)
            if model.float32_matmul_precision != "highest":
                precision += f" (fp32 matmuls: {model.float32_matmul_precision})"
            base = {
                "benchmark": unit.benchmark,
                "task": unit.task,
                "method": unit.method,
                "stage": stage,
                "seed": unit.seed,
                "epochs": epochs,
                "schedule_epochs": model.epochs,
                "warmup_epochs": model.warmup_epochs,
                "lr_schedule": f"cosine to {model.min_lr:g}, warmup from {model.warmup_lr:g} (per epoch)",
                "batch_size": data.batch_size,
                "train_split": "+".join(train_splits),
                "eval_split": eval_split,
                "train_images": sum(sizes.get(s, 0) for s in train_splits),
                "eval_images": sizes.get(eval_split, 0),
                "train_transform": repr(prep.pipeline(train=True)),
                "eval_transform": repr(prep.pipeline(train=False)),
                "preprocessing": prep.describe(train=True),
                "backbone": model.backbone,
                "drop_path": model.drop_path,
                "method_config": config_from_spec(_plain(model.method), "model.method").to_dict(),
                "no_weight_decay": NO_DECAY_RULE if model.no_decay_1d_and_bias else "none",
                "precision": precision,
                "selection": protocol.preset.selection if stage == "search" else None,
            }
            points = grid.points if stage == "search" else [(None, None)]
            runs += [{**base, "lr": lr, "weight_decay": wd} for lr, wd in points]
    return runs


def _plain(value: Any) -> Any:
    """A jsonargparse namespace (a method preset read from YAML) as plain dicts."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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
    return "\n".join(lines)


def write_plan(runs: list[dict[str, Any]], out: Path) -> Path:
    """`OUT/plan.json`: the planned runs."""
    import json

    from .files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    write_atomic(path, json.dumps(runs, indent=1))
    return path
