"""One training run of the protocol (a search grid point or a final run), resumable from its own folder.

A run is a LightningCLI invocation built from the preset's fit config, so its `config.yaml` is the exact, replayable
configuration (`wegeft-vision fit --config RUN/config.yaml`). Its folder holds `config.yaml`, `metrics.csv` (written
at every epoch's end), `checkpoints/last.ckpt` while it trains (trainable tensors + optimizer and scheduler state,
written atomically every `checkpoint_every` epochs: a run killed at any moment resumes from the last one) and
`result.json` once done; a final run also keeps its adapter (`adapter.safetensors` + sidecar). A run whose loss or
parameters become non-finite ends as `diverged` (its result says why); it is a result, not an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import pickle
import shutil
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..backbones import backbone_tag, describe_source, weights_source
from ..files import write_atomic
from ..methods import count_trainable
from ..training.cluster import cluster_environment
from ..training.packing import split_by_point
from ..training.run_config import RunConfig
from .preset import result_settings
from .results import RESULT_FILE
from .setups import backbone_label

METRICS_FILE = "metrics.csv"
EARLIER_METRICS_FILE = "metrics.earlier.csv"  # epochs logged before a resume (CSVLogger starts a new metrics.csv)


@dataclass(frozen=True)
class RunSpec:
    """One run of the protocol: which result it is, and its training configuration; equal specs give equal results.

    Attributes:
        benchmark, task: the task (`vtab-1k`, `cifar`; a folder of one's own: `custom` and its folder's name).
        method: the method's label in the protocol preset.
        preset: the protocol preset's name; `fingerprint` the digest of the preset and of the task's data.
        data_identity: the digest of the task's split files (`data.tasks.Task.identity`).
        config: what the run trains (recipe, method preset, grid point, seed, data, stage, devices).
        progress: show Lightning's progress bar (rich).
        checkpoint_every: epochs between checkpoints (where a killed run resumes).
    """

    benchmark: str
    task: str
    method: str
    preset: str
    fingerprint: str
    config: RunConfig
    data_identity: str = ""
    progress: bool = False
    checkpoint_every: int = 1

    @property
    def stage(self) -> str:
        return self.config.stage

    @property
    def lr(self) -> float:
        return self.config.lr

    @property
    def weight_decay(self) -> float:
        return self.config.weight_decay

    @property
    def seed(self) -> int:
        return self.config.seed

    def run_dir(self, out: Path) -> Path:
        point = f"lr{self.lr:g}_wd{self.weight_decay:g}"
        return out / "runs" / self.benchmark / self.task / self.method / f"seed{self.seed}" / self.stage / point

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (not where or how it is displayed, nor where data is cached)."""
        config = self.config.identity()
        config["overrides"] = result_settings(config["overrides"])
        fields = ("benchmark", "task", "method", "preset", "fingerprint", "data_identity")
        return {**{name: getattr(self, name) for name in fields}, **config}


def cached_result(spec: RunSpec, out: Path) -> dict[str, Any] | None:
    """The result of a run that already finished (its `result.json` written for this very spec), else None."""
    path = spec.run_dir(out) / RESULT_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["row"] if saved.get("spec") == json.loads(json.dumps(spec.identity())) else None


def train_run(spec: RunSpec, out: Path) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and return its results row (see `results.COLUMNS`); a diverged run's row
    has `state` `diverged`, its `reason`, and no `top1`."""
    return train_pack([spec], out)[0]


def train_pack(specs: list[RunSpec], out: Path) -> list[dict[str, Any]]:
    """Train grid points of one unit together (`training.packing`) and return each point's row, as `train_run` would.

    The points must differ only in lr and weight decay. Points finished earlier are reused, not trained; two or more
    others train as one packed run in `pack_dir` (its `config.yaml`, log and checkpoint: a killed pack resumes with
    all its points), and each point then gets its own folder's `metrics.csv` and `result.json`, as a run of its own.
    A point that diverges leaves the pack; its row is `diverged` and the others go on.
    """
    shared = [{k: v for k, v in s.identity().items() if k not in ("lr", "weight_decay")} for s in specs]
    if any(other != shared[0] for other in shared[1:]):
        raise ValueError("the points of a pack must differ only in lr and weight decay")
    rows = [cached_result(spec, out) for spec in specs]
    todo = [spec for spec, row in zip(specs, rows, strict=True) if row is None]
    if todo:
        fresh = iter(_train_together(todo, out))
        rows = [row if row is not None else next(fresh) for row in rows]
    return rows


def pack_dir(specs: list[RunSpec], out: Path) -> Path:
    """The folder of a packed run: beside its points' folders, named by a digest of the points."""
    points = json.dumps([[s.lr, s.weight_decay] for s in specs])
    return specs[0].run_dir(out).parent / f"pack-{hashlib.sha256(points.encode()).hexdigest()[:10]}"


def _train_together(specs: list[RunSpec], out: Path) -> list[dict[str, Any]]:
    from ..training import TrainingDiverged  # Lightning and jsonargparse only when something trains
    from ..training.cost import StepCost

    for name in ("lightning.pytorch", "lightning.fabric"):  # one summary line per run instead of Lightning's banner
        logging.getLogger(name).setLevel(logging.WARNING)
    packed = len(specs) > 1
    run_dir = pack_dir(specs, out) if packed else specs[0].run_dir(out)
    config = replace(specs[0].config, pack=tuple((s.lr, s.weight_decay) for s in specs)) if packed else None
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed_at = _checkpoint_epoch(run_dir / "checkpoints" / "last.ckpt")
    _keep_logged_epochs(run_dir, resumed_at)
    cost, reason = StepCost(), ""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        cli = (config or specs[0].config).instantiate(run_dir, specs[0].progress, specs[0].checkpoint_every)
        cli.trainer.callbacks.append(cost)
        try:
            top1 = _train(specs[0], run_dir, cli)
        except TrainingDiverged as diverged:
            top1, reason = {}, str(diverged)
    _merge_logged_epochs(run_dir)
    model = cli.model
    measured = {**cost.summary(model.device), "pack": len(specs)}
    optimizer_groups = model.parameter_groups()
    rows = []
    for k, spec in enumerate(specs):
        point_dir = spec.run_dir(out)
        if packed:
            point_dir.mkdir(parents=True, exist_ok=True)
            _write_metrics(point_dir / METRICS_FILE, split_by_point(_read_metrics(run_dir / METRICS_FILE), k))
            model.packed.write_point(k)  # the network as the point's own run leaves it (its parameter count, adapter)
        if k in top1:
            row = _row(spec, out, point_dir, cli, top1=top1[k])
        else:
            why = model.diverged[k] if packed else reason
            epochs = model.diverged_at.get(k) if packed else None
            row = _row(spec, out, point_dir, cli, top1=None, reason=why, epochs=epochs)
        row.update(measured)
        if spec.stage == "search" and row["state"] == "finished":
            row.update(_best_validation(point_dir / METRICS_FILE))
        if spec.stage == "final" and row["state"] == "finished":
            model.save_adapter(point_dir / "adapter.safetensors", extra={"result": row}, point=k)
        groups = [  # what the optimizer decayed: in result.json, since protocol runs keep Lightning's log quiet
            {"weight_decay": g["weight_decay"], "tensors": g["names"]} for g in optimizer_groups if g["point"] == k
        ]
        extra = {"pack": str(run_dir.relative_to(out))} if packed else {}
        _write_result(spec, point_dir, row, resumed_at, groups, extra)
        rows.append(row)
    if packed:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return rows


def _best_validation(metrics: Path) -> dict[str, Any]:
    """The best validation top-1 over a search run's epochs (the earliest epoch among equals), from its log."""
    scores = [(float(r["val/acc"]), int(r["epoch"])) for r in _read_metrics(metrics) if r.get("val/acc")]
    if not scores:
        return {}
    best, epoch = max(scores, key=lambda s: (s[0], -s[1]))
    return {"best_top1": round(100.0 * best, 4), "best_epoch": epoch}


def _checkpoint_epoch(last: Path) -> int:
    """The epoch a run resumes at; a checkpoint that does not load (not written by this toolkit's atomic writer, or
    damaged on disk) is removed and the run restarts from epoch 0."""
    last.with_name(last.name + ".partial").unlink(missing_ok=True)  # a write cut short by a kill
    if not last.is_file():
        return 0
    try:
        return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1
    except (RuntimeError, EOFError, KeyError, OSError, ValueError, pickle.UnpicklingError):
        last.unlink()
        return 0


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_metrics(path: Path, rows: list[dict[str, str]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def _keep_logged_epochs(run_dir: Path, resume_epoch: int) -> None:
    """Before a run (re)starts: the epochs already logged before `resume_epoch` move to `metrics.earlier.csv`, since
    Lightning's CSVLogger starts its `metrics.csv` afresh; later epochs (trained after the last checkpoint) are
    dropped, as they are trained again."""
    earlier = run_dir / EARLIER_METRICS_FILE
    rows = [*_read_metrics(earlier), *_read_metrics(run_dir / METRICS_FILE)]
    kept = [r for r in rows if r.get("epoch") and int(r["epoch"]) < resume_epoch]
    if kept:
        _write_metrics(earlier, kept)
    else:
        earlier.unlink(missing_ok=True)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)


def _merge_logged_epochs(run_dir: Path) -> None:
    """After a run: `metrics.csv` holds every epoch, those logged before each resume first."""
    earlier = run_dir / EARLIER_METRICS_FILE
    if earlier.is_file():
        _write_metrics(run_dir / METRICS_FILE, [*_read_metrics(earlier), *_read_metrics(run_dir / METRICS_FILE)])
        earlier.unlink()


def _preprocessing(prep: Any) -> str:
    """The evaluation pipeline in one field, e.g. `paper:resize224:size224:bicubic:crop1 mean=(0.5,..) std=(..)`."""
    numbers = {name: ",".join(f"{v:g}" for v in getattr(prep, name)) for name in ("mean", "std")}
    return f"{prep.describe(train=False)} mean=({numbers['mean']}) std=({numbers['std']})"


def _train(spec: RunSpec, run_dir: Path, cli: Any) -> dict[int, float]:
    """Fit, then evaluate the stage's split once: the top-1 of each point (0 for a run of one point) still trained."""
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    devices = spec.config.devices
    if devices > 1:
        if data.batch_size % devices:
            raise ValueError(f"batch size {data.batch_size} does not split over {devices} devices")
        data.batch_size //= devices  # the recipe's batch is the global one
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(model, datamodule=data, ckpt_path=last if last.is_file() else None, weights_only=True)
    if devices > 1:  # evaluate every sample exactly once: one device (a distributed sampler pads the split)
        data.setup()
        trainer = L.Trainer(
            accelerator=trainer.accelerator,
            devices=1,
            precision=trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=spec.progress,
            enable_model_summary=False,
            plugins=[cluster_environment()],
        )
    trainer.limit_val_batches = 1.0
    if spec.stage == "search":
        trainer.loggers = []  # the last epoch's validation is in the log already
    evaluate = trainer.validate if spec.stage == "search" else trainer.test
    metrics = evaluate(model, datamodule=data, verbose=False)[0]
    name = "val/acc" if spec.stage == "search" else "test/acc"
    if model.packed is None:
        return {0: 100.0 * float(metrics[name])}
    return {k: 100.0 * float(metrics[f"{name}@{k}"]) for k in model.packed.active}


def _row(
    spec: RunSpec,
    out: Path,
    run_dir: Path,
    cli: Any,
    top1: float | None,
    reason: str = "",
    epochs: int | None = None,
) -> dict[str, Any]:
    """The results row of a finished run, or (`top1` None) of a diverged one (after `epochs`, by default the epoch
    the trainer stopped in)."""
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    source = weights_source(model.network)
    name = model.network.default_cfg["architecture"] if source["kind"] == "random" else backbone_tag(model.network)
    return {
        "benchmark": spec.benchmark,
        "task": spec.task,
        "group": data.task.group or "",
        "method": spec.method,
        "stage": spec.stage,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "epochs": trainer.max_epochs if top1 is not None else epochs or trainer.current_epoch + 1,
        "top1": round(top1, 4) if top1 is not None else "",
        "state": "finished" if top1 is not None else "diverged",
        "reason": reason,
        "best_top1": "",
        "best_epoch": "",
        "params": count_trainable(model.network),  # the head excluded, as in the paper's tables
        "backbone": backbone_label(name, model.hparams.backbone_overrides),
        "preset": spec.preset,
        "schedule_epochs": model.hparams.epochs,
        "weights": describe_source(source),
        "preprocessing": _preprocessing(data.preprocessing),
        "train_splits": "+".join(data.train_splits),
        "eval_split": data.eval_split,
        "eval_size": len(data.samples["eval"]),
        "batch_size": data.batch_size * spec.config.devices,
        "precision": _precision(str(trainer.precision), model.hparams.float32_matmul_precision),
        "fingerprint": spec.fingerprint[:12],
        "run_dir": str(run_dir.relative_to(out)),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _precision(trainer_precision: str, matmul: str) -> str:
    """The trainer's precision, with the fp32 matmul precision when it is not true fp32 (`32-true+tf32`)."""
    return trainer_precision + {"highest": "", "high": "+tf32", "medium": "+matmul-bf16"}[matmul]


def _write_result(
    spec: RunSpec,
    run_dir: Path,
    row: dict[str, Any],
    resumed_at: int,
    groups: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """`result.json` (written whole or not at all), then the checkpoints go: the run is done."""
    record = {
        "spec": spec.identity(),
        "row": row,
        "resumed_at_epoch": resumed_at or None,
        "optimizer_groups": groups,
        **(extra or {}),
    }
    write_atomic(run_dir / RESULT_FILE, json.dumps(record, indent=1))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # done: the optimizer state is no longer needed
