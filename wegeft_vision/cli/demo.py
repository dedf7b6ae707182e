"""`wegeft-vision demo`: the main job for real, offline, on 2 CPU cores in minutes.

    wegeft-vision demo                     # three tasks, WeGeFT, LoRA, BitFit, linear probes: at most 5 minutes
    wegeft-vision demo --quick             # one task, one grid point per method: at most 1 minute

It writes three downstream tasks (digits: real handwritten scans; textures; shapes_position: synthetic shapes with
object masks) as task folders, runs the `demo` protocol preset (search on val, selection, final on test) with the same
code as `wegeft-vision protocol` on the shipped mini-ViT pretrained on glyphs, prints the report's table (group means,
Mean, params) and writes its files, then draws the final WeGeFT adapter's cluster heatmaps on the structured task and
scores them against the object masks (best cluster vs permuted maps). Rerunning resumes, as the protocol does.
"""

from __future__ import annotations

import argparse
import csv
import time
from datetime import timedelta
from pathlib import Path

from ..demo.pixels import pixel_logistic_regression
from ..demo.tasks import WRITERS, write_tasks
from ..protocol.report import MEAN, Table, build_tables, read_results, render_markdown, write_tables
from . import protocol, visualize

HELP = "run the whole main job on the shipped pretrained mini-ViT: protocol, report, heatmaps (offline, CPU)"
NATURAL_TASK, HEATMAP_TASK = "digits", "shapes_position"
CONTROL = "linear_random"


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="one task (shapes_position), one point per method")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, one CPU thread each (default: 2, for 2 cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no Lightning progress bars")


def _protocol_args(args: argparse.Namespace, folders: list[Path]) -> argparse.Namespace:
    """The arguments of `wegeft-vision protocol` for the demo: the same command, so the same code."""
    argv = ["protocol", "--config", "demo_quick" if args.quick else "demo", "--out", str(args.out)]
    argv += ["--tasks", *map(str, folders), "--workers", str(args.workers), "--poll", "1"]
    argv += ["--set", f"data.cache_dir={args.out / 'cache'}"]  # decoded once, then one gather per batch
    argv += ["--no-progress"] if args.no_progress else []
    parser = argparse.ArgumentParser(prog="wegeft-vision protocol")
    protocol.add_parser(parser)
    parsed = parser.parse_args(argv[1:])
    parsed.argv, parsed.debug = argv, False
    return parsed


def _final_adapter(results: list[dict], out: Path, task: str, method: str = "wegeft") -> Path:
    rows = [r for r in results if r["task"] == task and r["method"] == method and r["stage"] == "final"]
    if not rows:
        raise FileNotFoundError(f"no final {method} run of {task} in {out / 'results.csv'}")
    return out / rows[-1]["run_dir"] / "adapter.safetensors"


def _verdicts(table: Table) -> list[str]:
    """What the demo is meant to show, read from the report's table (its `Mean` of final test top-1, its params)."""
    means = {row.method: row.cells[MEAN].mean for row in table.rows if MEAN in row.cells}
    params = {row.method: round(row.params_m * 1e6) for row in table.rows}
    lines = []
    if {"wegeft", "linear", CONTROL} <= set(means):
        holds = means["wegeft"] > means["linear"] > means[CONTROL]
        lines.append(
            f"{'yes' if holds else 'NO '}: WeGeFT {means['wegeft']:.1f} > linear probe {means['linear']:.1f} > "
            f"linear probe on a random-init backbone {means[CONTROL]:.1f} (mean final test top-1)"
        )
    if {"wegeft", "lora"} <= set(params):
        holds = params["wegeft"] < params["lora"]
        lines.append(
            f"{'yes' if holds else 'NO '}: WeGeFT trains {params['wegeft']:,} parameters besides the head, "
            f"LoRA {params['lora']:,}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.workers < 1:
        raise ValueError(f"--workers should be at least 1, got {args.workers}")
    names = [HEATMAP_TASK] if args.quick else list(WRITERS)
    data = args.out / "data"
    missing = [name for name in names if not (data / name / "manifest.yaml").is_file()]
    folders = [data / name for name in names]
    write_tasks(data, missing)  # a rerun keeps the tasks already written (and the runs trained on them)
    print(f"tasks in {data}: {', '.join(names)} ({time.monotonic() - started:.0f} s)", flush=True)
    if NATURAL_TASK in names:
        accuracy = pixel_logistic_regression(data / NATURAL_TASK)
        print(f"reference: logistic regression on the raw pixels of {NATURAL_TASK}: test top-1 {accuracy:.1f}%")

    code = protocol.run(_protocol_args(args, folders))
    if code:
        return code
    results = read_results(args.out / "results.csv")
    tables = build_tables(results)
    for table in tables:
        print(render_markdown(table))
    paths = write_tables(tables, args.out / "report")
    print("report: " + ", ".join(str(p) for p in paths.values()))

    heatmaps = args.out / "heatmaps"
    parser = argparse.ArgumentParser(prog="wegeft-vision visualize")
    visualize.add_parser(parser)
    adapter = _final_adapter(results, args.out, HEATMAP_TASK)
    visualize.run(
        parser.parse_args(
            ["--adapter", str(adapter), "--task", str(data / HEATMAP_TASK), "--split", "test", "--limit", "48"]
            + ["--grids", "4", "--mosaic-images", "24", "--score", "--out", str(heatmaps)]
        )
    )
    with (heatmaps / "best_clusters.csv").open(newline="") as handle:
        best = next(csv.DictReader(handle))
    for line in _verdicts(tables[0]):  # the demo's tasks are all folders: one table
        print(line)
    holds = float(best["score"]) > float(best["baseline"])
    print(
        f"{'yes' if holds else 'NO '}: the best WeGeFT cluster covers the {HEATMAP_TASK} target with IoU "
        f"{float(best['score']):.3f}, against {float(best['baseline']):.3f} for permuted maps"
    )
    print(f"demo done in {timedelta(seconds=round(time.monotonic() - started))}; everything is in {args.out}")
    return 0
