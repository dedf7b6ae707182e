"""One training run of the protocol (a search grid point or a final run), resumable from its own folder.

A run is a LightningCLI invocation built from the preset's fit config, so its `config.yaml` is the exact, replayable
configuration (`wegeft-vision fit --config RUN/config.yaml`). Its folder holds `config.yaml`, `metrics.csv` (written
at every epoch's end), `checkpoints/last.ckpt` while it trains (trainable tensors + optimizer and scheduler state,
written atomically every `checkpoint_every` epochs: a run killed at any moment resumes from the last one) and
`result.json` once done; a final run also keeps its adapter (`adapter.safetensors` + sidecar). A run whose loss or
parameters become non-finite ends as `diverged` (its result says why); it is a result, not an error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import pickle
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..backbones import backbone_tag, describe_source, weights_source
from ..data.registry import CUSTOM, FGVC
from ..methods import count_trainable
from .files import write_atomic
from .preset import result_settings

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
EARLIER_METRICS_FILE = "metrics.earlier.csv"  # epochs logged before a resume (CSVLogger starts a new metrics.csv)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run; equal specs give equal results.

    Attributes:
        benchmark, task: the target (`vtab-1k`, `cifar`).
        method: the method's label in the protocol preset; `method_config` its preset file.
        stage: `search` (train -> val, stopped after `search_epochs`) or `final` (train(+val) -> test).
        lr, weight_decay, seed: the grid point and the seed of data order, initialization and drop-path draws.
        fit_config: the LightningCLI config of the training recipe; `overrides` `section.key: value` on top of it.
        data_root: the folder holding one folder per task or dataset; `splits_dir` FGVC split files elsewhere.
        manifest: a manifest file for a task outside the registry (synthetic or custom).
        search_epochs: epochs of a search run (the schedule keeps its full length).
        final_includes_val: FGVC final trains on train+val.
        preset: the protocol preset's name; `fingerprint` the digest of the preset and of the task's data.
        data_identity: the digest of the task's split files (`data.identity.data_identity`).
        devices: devices of the run (DDP over several, per-device batch = batch / devices).
        progress: show Lightning's progress bar (rich when available).
        checkpoint_every: epochs between checkpoints (where a killed run resumes).
    """

    benchmark: str
    task: str
    method: str
    method_config: str
    stage: str
    lr: float
    weight_decay: float
    seed: int
    fit_config: str
    data_root: str
    search_epochs: int
    preset: str
    fingerprint: str
    splits_dir: str | None = None
    manifest: str | None = None
    final_includes_val: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    data_identity: str = ""
    devices: int = 1
    progress: bool = False
    checkpoint_every: int = 1

    def run_dir(self, out: Path) -> Path:
        point = f"lr{self.lr:g}_wd{self.weight_decay:g}"
        return out / "runs" / self.benchmark / self.task / self.method / f"seed{self.seed}" / self.stage / point

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (not where or how it is displayed, nor where data is cached)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("progress", "checkpoint_every")}
        return {**fields, "overrides": result_settings(self.overrides)}


def _arguments(spec: RunSpec, run_dir: Path) -> list[str]:
    root = Path(spec.data_root)
    if spec.benchmark == CUSTOM:  # a folder of one's own: it is the dataset, with its manifest inside
        data = [f"--data.dataset={root}"]
    else:
        data = [
            f"--data.dataset={spec.benchmark}/{spec.task}",
            f"--data.root={root / spec.task if spec.benchmark == FGVC else root}",
        ]
    args = ["--config", spec.fit_config]
    args += [
        f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in spec.overrides.items()
    ]
    args += [
        f"--model.method={spec.method_config}",
        f"--model.lr={spec.lr!r}",
        f"--model.weight_decay={spec.weight_decay!r}",
        f"--seed_everything={spec.seed}",
        *data,
        f"--data.stage={spec.stage}",
        f"--data.seed={spec.seed}",
        f"--data.final_includes_val={str(spec.final_includes_val).lower()}",
        f"--trainer.default_root_dir={run_dir}",
        # search: val every epoch (best and last both recorded); final: nothing evaluated until the end (test once)
        f"--trainer.limit_val_batches={1.0 if spec.stage == 'search' else 0}",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_model_summary=false",
        f"--trainer.enable_progress_bar={str(spec.progress).lower()}",
        "--trainer.logger="
        + json.dumps(
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "", "version": "", "flush_logs_every_n_steps": 1},
            }
        ),
        "--trainer.callbacks+="
        + json.dumps(
            {
                "class_path": "wegeft_vision.training.EpochCheckpoint",
                "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_epochs": spec.checkpoint_every},
            }
        ),
    ]
    if spec.progress:
        args.append("--trainer.callbacks+=lightning.pytorch.callbacks.RichProgressBar")
    if spec.stage == "search":
        args.append(f"--trainer.max_epochs={spec.search_epochs}")
    if spec.splits_dir:
        args.append(f"--data.splits_dir={spec.splits_dir}")
    if spec.manifest and spec.benchmark != CUSTOM:
        args.append(f"--data.manifest={spec.manifest}")
    if spec.devices > 1:
        args += [f"--trainer.devices={spec.devices}", "--trainer.strategy=ddp_spawn"]
    return args


# What every run sets itself (`_arguments`): a recipe override of one of these would be silently replaced.
SET_PER_RUN = {
    "model.lr": "the grid's lr",
    "model.weight_decay": "the grid's weight_decay",
    "model.method": "the method's preset",
    "seed_everything": "--seeds",
    "data.dataset": "--tasks",
    "data.root": "--data-root",
    "data.manifest": "--tasks",
    "data.splits_dir": "--splits-dir",
    "data.stage": "the protocol's stage",
    "data.seed": "--seeds",
    "data.final_includes_val": "--final-includes-val",
    "trainer.default_root_dir": "--out",
}


def check_overrides(overrides: dict[str, Any], where: str) -> None:
    """Refuse an override of something every run sets itself, naming the key and where to change it instead."""
    for key in overrides:
        if key in SET_PER_RUN:
            raise ValueError(f"{where} {key}={overrides[key]!r}: every run sets {key} from {SET_PER_RUN[key]}")


def check_specs(specs: list[RunSpec], out: Path) -> None:
    """Parse the LightningCLI configuration of each spec (nothing built, nothing written), so that a bad recipe,
    method preset or override fails before anything is pinned.

    Raises:
        ValueError: a configuration that does not parse; the message names the spec's files and the bad key.
    """
    from ..training.cli import build_cli

    parser = None
    for spec in specs:
        args = _arguments(spec, spec.run_dir(out))
        try:
            if parser is None:
                parser = build_cli(args, instantiate=False).parser
            else:
                parser.parse_args(args)
        except argparse.ArgumentError as err:
            message = " ".join(str(err).split())
            raise ValueError(
                f"the run configuration of {spec.method} on {spec.task} ({spec.fit_config}, {spec.method_config}, "
                f"overrides {spec.overrides}) does not parse: {message}"
            ) from err


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
    if (row := cached_result(spec, out)) is not None:
        return row
    from ..training import TrainingDiverged
    from ..training.cli import build_cli  # Lightning and jsonargparse only when something trains

    for name in ("lightning.pytorch", "lightning.fabric"):  # one summary line per run instead of Lightning's banner
        logging.getLogger(name).setLevel(logging.WARNING)
    run_dir = spec.run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed_at = _checkpoint_epoch(run_dir / "checkpoints" / "last.ckpt")
    _keep_logged_epochs(run_dir, resumed_at)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        cli = build_cli(_arguments(spec, run_dir))
        try:
            row = _train(spec, out, run_dir, cli)
        except TrainingDiverged as diverged:
            row = _row(spec, out, run_dir, cli, top1=None, reason=str(diverged))
    _merge_logged_epochs(run_dir)
    if spec.stage == "search" and row["state"] == "finished":
        row.update(_best_validation(run_dir / METRICS_FILE))
    groups = [
        {"weight_decay": g["weight_decay"], "tensors": g["names"]} for g in cli.model.parameter_groups()
    ]  # what the optimizer decayed: in result.json, since protocol runs keep Lightning's log quiet
    _write_result(spec, run_dir, row, resumed_at, groups)
    return row


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


def _train(spec: RunSpec, out: Path, run_dir: Path, cli: Any) -> dict[str, Any]:
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    if spec.devices > 1:
        if data.batch_size % spec.devices:
            raise ValueError(f"batch size {data.batch_size} does not split over {spec.devices} devices")
        data.batch_size //= spec.devices  # the recipe's batch is the global one
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(model, datamodule=data, ckpt_path=last if last.is_file() else None, weights_only=True)
    if spec.devices > 1:  # evaluate every sample exactly once: one device (a distributed sampler pads the split)
        data.setup()
        trainer = L.Trainer(
            accelerator=trainer.accelerator,
            devices=1,
            precision=trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=spec.progress,
            enable_model_summary=False,
        )
    trainer.limit_val_batches = 1.0
    if spec.stage == "search":
        trainer.loggers = []  # the last epoch's validation is in the log already
    evaluate = trainer.validate if spec.stage == "search" else trainer.test
    metrics = evaluate(model, datamodule=data, verbose=False)[0]
    top1 = 100.0 * float(metrics["val/acc" if spec.stage == "search" else "test/acc"])
    row = _row(spec, out, run_dir, cli, top1=top1)
    if spec.stage == "final":
        model.save_adapter(run_dir / "adapter.safetensors", extra={"result": row})
    return row


def _row(spec: RunSpec, out: Path, run_dir: Path, cli: Any, top1: float | None, reason: str = "") -> dict[str, Any]:
    """The results row of a finished run, or (`top1` None) of a diverged one."""
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    source = weights_source(model.network)
    return {
        "benchmark": spec.benchmark,
        "task": spec.task,
        "group": data.manifest.group or "",
        "method": spec.method,
        "stage": spec.stage,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "epochs": trainer.max_epochs if top1 is not None else trainer.current_epoch + 1,
        "top1": round(top1, 4) if top1 is not None else "",
        "state": "finished" if top1 is not None else "diverged",
        "reason": reason,
        "best_top1": "",
        "best_epoch": "",
        "params": count_trainable(model.network),  # the head excluded, as in the paper's tables
        "backbone": model.network.default_cfg["architecture"]
        if source["kind"] == "random"
        else backbone_tag(model.network),
        "preset": spec.preset,
        "schedule_epochs": model.hparams.epochs,
        "weights": describe_source(source),
        "preprocessing": _preprocessing(data.preprocessing),
        "train_splits": "+".join(data.train_splits),
        "eval_split": data.eval_split,
        "eval_size": len(data.samples["eval"]),
        "batch_size": data.batch_size * spec.devices,
        "precision": _precision(str(trainer.precision), model.hparams.float32_matmul_precision),
        "fingerprint": spec.fingerprint[:12],
        "run_dir": str(run_dir.relative_to(out)),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _precision(trainer_precision: str, matmul: str) -> str:
    """The trainer's precision, with the fp32 matmul precision when it is not true fp32 (`32-true+tf32`)."""
    return trainer_precision + {"highest": "", "high": "+tf32", "medium": "+matmul-bf16"}[matmul]


def _write_result(
    spec: RunSpec, run_dir: Path, row: dict[str, Any], resumed_at: int, groups: list[dict[str, Any]]
) -> None:
    """`result.json` (written whole or not at all), then the checkpoints go: the run is done."""
    record = {"spec": spec.identity(), "row": row, "resumed_at_epoch": resumed_at or None, "optimizer_groups": groups}
    write_atomic(run_dir / RESULT_FILE, json.dumps(record, indent=1))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # done: the optimizer state is no longer needed
