"""The embedded demo from start to end: the main job for real, offline, on 2 CPU cores in minutes.

It writes three downstream tasks (photo_crops_48: crops of colour photographs; textures; shapes_position: synthetic
shapes with object masks) as task folders, runs the `demo` protocol preset (search on val, selection, final on test)
through the same `protocol.launch.run` as `wegeft-vision protocol`, on the shipped pretrained mini-ViT, prints the
report's table (group means, Mean, params) and writes its files, then draws the final WeGeFT adapter's cluster
heatmaps on the structured task and scores them against the object masks (best cluster vs permuted maps). Rerunning
resumes, as the protocol does. `wegeft-vision demo` parses its options into `run_demo`.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from ..data.folders import MANIFEST_FILE
from ..data.tasks import open_task
from ..protocol import launch
from ..protocol.report import MEAN, Table, build_tables, read_results
from ..protocol.report_files import render_markdown, write_tables
from ..viz.pipeline import HeatmapOptions, list_items, write_heatmaps
from .pixels import pixel_logistic_regression
from .tasks import WRITERS, write_tasks

NATURAL_TASK, HEATMAP_TASK = "photo_crops_48", "shapes_position"
CONTROL = "linear_random"
HEATMAPS = HeatmapOptions(limit=48, grids=4, mosaic_images=24, score=True)


def run_demo(out: Path, quick: bool = False, workers: int = 2, progress: bool = True) -> int:
    """Run the demo into `out` (data, runs, report, heatmaps), printing what it does and the verdicts it shows.

    Args:
        out: the run folder.
        quick: one task (shapes_position) and one grid point per method (the `demo_quick` preset).
        workers: protocol worker processes, one CPU thread each.
        progress: Lightning progress bars.

    Returns:
        The protocol's exit code (0 when every run finished).
    """
    started = time.monotonic()
    if workers < 1:
        raise ValueError(f"--workers should be at least 1, got {workers}")
    names = [HEATMAP_TASK] if quick else list(WRITERS)
    data = out / "data"
    write_tasks(data, [name for name in names if not (data / name / MANIFEST_FILE).is_file()])  # a rerun keeps them
    print(f"tasks in {data}: {', '.join(names)} ({time.monotonic() - started:.0f} s)", flush=True)
    if NATURAL_TASK in names:
        accuracy = pixel_logistic_regression(data / NATURAL_TASK)
        print(f"reference: logistic regression on the raw pixels of {NATURAL_TASK}: test top-1 {accuracy:.1f}%")

    request = launch.Request(
        preset="demo_quick" if quick else "demo",
        out=out,
        tasks=[str(data / name) for name in names],
        overrides={"data.cache_dir": str(out / "cache")},  # decoded once, then one gather per batch
        progress=progress,
        poll=1.0,
    )
    code = launch.run(request, workers=workers)
    if code:
        return code
    results = read_results(out / "results.csv")
    tables = build_tables(results)
    for table in tables:
        print(render_markdown(table))
    paths = write_tables(tables, out / "report")
    print("report: " + ", ".join(str(p) for p in paths.values()))

    heatmaps = out / "heatmaps"
    items = list_items(task=open_task(data / HEATMAP_TASK), split="test")
    summary = write_heatmaps(_final_adapter(results, out, HEATMAP_TASK), items, heatmaps, HEATMAPS)
    print("\n".join(summary.lines(heatmaps, HEATMAPS)))
    for line in _verdicts(tables[0]):  # the demo's tasks are all folders: one table
        print(line)
    best = summary.best[0]
    print(
        f"{'yes' if best.score > best.baseline else 'NO '}: the best WeGeFT cluster covers the {HEATMAP_TASK} target "
        f"with IoU {best.score:.3f}, against {best.baseline:.3f} for permuted maps"
    )
    print(f"demo done in {timedelta(seconds=round(time.monotonic() - started))}; everything is in {out}")
    return 0


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
