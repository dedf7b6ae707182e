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
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

HELP = "run the search-then-final protocol (search, selection on val, final on test) and append to OUT/results.csv"
SEARCH_HELP = "run search workers only (the grid of each task x method x seed) against a shared study storage"
PROTOCOL_FILE = "protocol.json"


def _list(values: list[str] | None) -> list[str] | None:
    return [v for value in values for v in value.split(",") if v] if values else None


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"--set expects SECTION.KEY=VALUE (e.g. data.num_workers=8), got {text!r}")
    return key, yaml.safe_load(value)


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
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the study storage")
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line of a worker process: the parent's, without the options that spawn workers."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--gpus"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--gpus=")):
            continue
        out.append(arg)
    return [*out, "--worker", "--no-progress"]


def _spawn_workers(args: argparse.Namespace) -> int:
    gpus = [g for g in (args.gpus or "").split(",") if g]
    if len(gpus) % args.devices:
        raise ValueError(f"--gpus {args.gpus} does not split into workers of --devices {args.devices} GPUs each")
    groups = [",".join(gpus[i : i + args.devices]) for i in range(0, len(gpus), args.devices)]
    count = len(groups) or args.workers
    argv = _worker_argv(args.argv)
    processes = []
    threads = str(max(1, (os.cpu_count() or 1) // count))
    for index in range(count):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", threads)  # workers x threads = cores: oversubscribed CPUs crawl
        if groups:
            env["CUDA_VISIBLE_DEVICES"] = groups[index]  # one worker per GPU, or per group of --devices GPUs
        processes.append(subprocess.Popen([sys.executable, "-m", "wegeft_vision.cli", *argv], env=env))
    print(f"started {count} workers (pids {', '.join(str(p.pid) for p in processes)})", flush=True)
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: they fail their trials and exit
        codes = [p.wait() for p in processes]
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return max(codes)


def _check_protocol_file(out: Path, record: dict[str, Any]) -> None:
    path = out / PROTOCOL_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") != record["fingerprint"]:
            raise ValueError(
                f"{path} was written by preset {saved.get('preset')!r} with other settings (recipe, overrides, grids "
                "or search length differ); results would not be comparable: use another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def run(args: argparse.Namespace, stages: tuple[str, ...] = ("search", "final")) -> int:
    from ..protocol.preset import load_preset
    from ..protocol.runner import Protocol, expand_units, prepare_data, resolve_tasks
    from ..protocol.runs import check_overrides
    from ..protocol.search import open_storage

    if args.workers < 1 or args.devices < 1:
        raise ValueError("--workers and --devices should be at least 1")
    preset = load_preset(args.config)
    overrides = dict(args.set)
    for key, value in (("model.backbone", args.backbone), ("model.weights", args.weights)):
        if value:
            overrides[key] = value
    if args.precision:
        overrides["trainer.precision"] = args.precision
    check_overrides(overrides, "--set")
    check_overrides(preset.overrides, f"preset {preset.path}: override")
    for label, grid in preset.methods.items():
        check_overrides(grid.overrides, f"preset {preset.path}: method {label}: override")
    preset = replace(preset, overrides={**preset.overrides, **overrides})
    if args.final_includes_val is not None:
        preset = replace(preset, final_includes_val=args.final_includes_val)
    methods = _list(args.methods) or list(preset.methods)
    unknown = [m for m in methods if m not in preset.methods]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r} for preset {preset.name}; expected one of {list(preset.methods)}"
        )
    pairs = resolve_tasks(args.benchmark, _list(args.tasks), preset)
    if args.data_root is not None and not args.data_root.is_dir():
        raise FileNotFoundError(f"--data-root {args.data_root} does not exist")
    data_root = args.data_root or (args.out / "data" if preset.synthetic else None)
    tasks = prepare_data(pairs, data_root, preset)
    units = expand_units(tasks, methods, list(args.seeds or preset.seeds))
    protocol = Protocol(
        preset,
        units,
        args.out,
        data_root,
        splits_dir=args.splits_dir,
        storage=args.storage,
        stages=stages,
        devices=args.devices,
        progress=not args.no_progress and sys.stdout.isatty(),
        poll=args.poll,
        heartbeat=args.heartbeat,
    )
    protocol.check_configurations()  # before anything is pinned or written
    _check_protocol_file(
        args.out,
        {
            "preset": preset.name,
            "preset_file": str(preset.path),
            "fingerprint": preset.fingerprint(),
            "overrides": preset.overrides,
            "final_includes_val": preset.final_includes_val,
            "storage": args.storage,
        },
    )
    if (args.workers > 1 or args.gpus) and not args.worker:
        open_storage(args.storage, args.out, args.heartbeat)  # create the schema once, before the workers race to
        return _spawn_workers(args)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        return protocol.run()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def run_search(args: argparse.Namespace) -> int:
    return run(args, stages=("search",))
