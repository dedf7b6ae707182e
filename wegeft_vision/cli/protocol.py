"""`wegeft-vision protocol` and `wegeft-vision search`: the paper's search-then-final protocol, resumable and shared.

    wegeft-vision protocol --benchmark vtab-1k --tasks all --methods wegeft lora --data-root VTAB --out runs/vtab
    wegeft-vision protocol --config smoke --out /tmp/smoke            # checks an installation in under a minute
    wegeft-vision search ... --storage postgresql://host/db           # one search worker, e.g. per SLURM array task

Rerunning the same command resumes: finished runs are skipped, failed or interrupted ones redone. `--workers N`
(or `--gpus 0,1,...`, one worker per GPU) starts N worker processes on one study storage; `--devices N` trains each
run on N GPUs with DDP instead (with `--gpus`, one worker per group of N GPUs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # Optuna, SQLAlchemy and Lightning load only when a protocol runs
    from ..protocol.launch import Request

STAGES = ("search", "final")


def _list(values: list[str] | None) -> list[str] | None:
    return [v for value in values for v in value.split(",") if v] if values else None


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"--set expects SECTION.KEY=VALUE (e.g. data.num_workers=8), got {text!r}")
    return key, yaml.safe_load(value)


def _sbatch_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--slurm expects KEY=VALUE (e.g. partition=gpu), got {text!r}")
    return key, yaml.safe_load(value)


def _pack(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--pack expects a number >= 1 or auto, got {text!r}")
    return int(text)


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="paper", help="protocol preset: a name (paper, paper_text, smoke) or YAML")
    parser.add_argument("--benchmark", choices=("vtab-1k", "fgvc"), help="benchmark of the --tasks names")
    parser.add_argument(
        "--tasks",
        nargs="+",
        help="`all`, task names, BENCHMARK/NAME, or folders of your own in the VTAB-1k or ImageFolder layout "
        "(./path or /path; default: the preset's)",
    )
    parser.add_argument("--methods", nargs="+", help="method labels of the preset (default: all of them)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the preset's)")
    parser.add_argument(
        "--data-root", type=Path, help="folder with one folder per task/dataset (synthetic: OUT/data; not for folders)"
    )
    parser.add_argument("--splits-dir", type=Path, help="FGVC split files, if not inside the dataset folders")
    parser.add_argument("--out", type=Path, required=True, help="run folder: results.csv, runs/, optuna.db")
    parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite in OUT)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (or SLURM jobs) sharing the storage")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: train here (and in --workers processes); slurm: submit --workers SLURM jobs (submitit) and "
        "wait for them (default storage: a journal file in OUT)",
    )
    parser.add_argument(
        "--slurm",
        type=_sbatch_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an sbatch option of the jobs, e.g. --slurm partition=gpu --slurm time=240 --slurm gpus_per_node=1 "
        "(over the preset's `slurm:`)",
    )
    parser.add_argument("--detach", action="store_true", help="with --launcher slurm: return once the jobs are queued")
    parser.add_argument("--gpus", help="comma-separated GPU ids: one worker per GPU (per --devices GPUs with DDP)")
    parser.add_argument("--devices", type=int, default=1, help="devices per run (Lightning DDP when more than one)")
    parser.add_argument("--backbone", help="timm architecture.tag (default: the recipe's)")
    parser.add_argument("--weights", help="local weights file of the backbone")
    parser.add_argument("--precision", help="trainer precision: 32-true, bf16-mixed, 16-mixed")
    parser.add_argument(
        "--final-includes-val",
        action=argparse.BooleanOptionalAction,
        help="FGVC final on train+val (the paper's text) instead of train (the authors' code; default per preset)",
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe setting, e.g. --set data.num_workers=8 (changes the fingerprint)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no Lightning progress bars")
    parser.add_argument("--poll", type=float, default=30.0, help="seconds between checks while others train")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats (RDB storages)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=1, metavar="N", help="epochs between the checkpoints runs resume from"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (every run with its resolved settings, and the cost) and write OUT/plan.json; "
        "trains nothing, needs no data and no weights",
    )
    parser.add_argument(
        "--pack",
        type=_pack,
        default=1,
        metavar="K|auto",
        help="train K grid points of a unit in one run (one forward/backward over the same images, each point "
        "exactly as its own run); auto: as many as memory allows (default 1)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def request_of(args: argparse.Namespace, stages: tuple[str, ...]) -> Request:
    """The protocol request of the parsed command line."""
    from ..protocol.launch import Request

    overrides = dict(args.set)
    for key, value in (("model.backbone", args.backbone), ("model.weights", args.weights)):
        if value:
            overrides[key] = value
    if args.precision:
        overrides["trainer.precision"] = args.precision
    return Request(
        preset=args.config,
        out=args.out,
        benchmark=args.benchmark,
        tasks=_list(args.tasks),
        methods=_list(args.methods),
        seeds=args.seeds,
        data_root=args.data_root,
        splits_dir=args.splits_dir,
        storage=args.storage,
        overrides=overrides,
        final_includes_val=args.final_includes_val,
        stages=stages,
        devices=args.devices,
        progress=not args.no_progress and sys.stdout.isatty(),
        poll=args.poll,
        heartbeat=args.heartbeat,
        checkpoint_every=args.checkpoint_every,
        pack=args.pack,
    )


def run(args: argparse.Namespace, stages: tuple[str, ...] = STAGES) -> int:
    from ..protocol import launch

    request = request_of(args, stages)
    if args.dry_run:
        from ..protocol.plan import plan_runs, summary, write_plan

        runs = plan_runs(launch.prepare_plan(request))
        print(summary(runs))
        print(f"wrote {write_plan(runs, args.out)}")
        return 0
    if args.launcher != "slurm" and (args.slurm or args.detach):
        raise ValueError("--slurm and --detach need --launcher slurm")
    try:
        if args.launcher == "slurm":
            from ..protocol import slurm

            if args.gpus:
                raise ValueError("--gpus picks GPUs here; SLURM jobs ask for theirs: --slurm gpus_per_node=N")
            return slurm.launch(slurm_request(request), args.workers, dict(args.slurm), args.detach)
        if args.worker:  # one of the processes of `--workers`/`--gpus`: trains here
            return launch.run(request)
        return launch.run(request, args.workers, args.gpus)
    except KeyboardInterrupt:
        from ..protocol import preemption

        if (name := preemption.received()) is not None:
            print(f"stopped by {name}; rerun the same command to resume", file=sys.stderr)
            return preemption.EXIT_CODE
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def slurm_request(request: Request) -> Request:
    """The request of SLURM jobs: for a new run folder without `--storage`, a journal file in it (jobs on other hosts
    share a file system, not an embedded SQLite file)."""
    import dataclasses

    if request.storage is not None or (request.out / "protocol.json").is_file():
        return request  # the storage OUT was started with (its own SQLite file if none was named) stays its storage
    request.out.mkdir(parents=True, exist_ok=True)  # the journal file's folder
    return dataclasses.replace(request, storage=f"journal:{(request.out / 'optuna.journal').resolve()}")


def run_search(args: argparse.Namespace) -> int:
    return run(args, stages=("search",))
