"""Time `wegeft-vision demo` and `wegeft-vision demo --quick` from scratch against their budgets (5 and 1 minutes).

    python scripts/bench_demo.py --json bench_results/demo.json

Each variant runs as a fresh process in a fresh folder (tasks written, every run trained, report and heatmaps drawn),
as a new user's first command would. The table gives the wall time, its ratio to the budget, the mean final test
top-1 per method and the best cluster's IoU against the permuted-map baseline; the JSON holds the same, and each
variant's full output is written beside it (`<json stem>.<variant>.log`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"demo": ([], 300.0), "demo --quick": (["--quick"], 60.0)}


def measure(extra: list[str], out: Path) -> tuple[dict, str]:
    started = time.monotonic()
    command = [sys.executable, "-m", "wegeft_vision.cli", "demo", "--out", str(out), "--no-progress", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    with (out / "results.csv").open(newline="") as handle:
        finals = [row for row in csv.DictReader(handle) if row["stage"] == "final"]
    means = {}
    for method in dict.fromkeys(row["method"] for row in finals):
        scores = [float(row["top1"]) for row in finals if row["method"] == method]
        means[method] = round(sum(scores) / len(scores), 2)
    with (out / "heatmaps" / "best_clusters.csv").open(newline="") as handle:
        best = next(csv.DictReader(handle))
    row = {
        "wall_s": round(elapsed, 1),
        "mean_final_top1": means,
        "best_iou": float(best["score"]),
        "permuted_iou": float(best["baseline"]),
        "tasks": sorted({row["task"] for row in finals}),
    }
    return row, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    rows, logs = {}, {}
    for name in args.variants:
        extra, budget = VARIANTS[name]
        folder = Path(tempfile.mkdtemp(prefix="bench_demo_"))
        try:
            row, logs[name] = measure(extra, folder / "run")
            rows[name] = {**row, "budget_s": budget}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows[name]["ratio_to_budget"] = round(rows[name]["wall_s"] / budget, 3)
    header = f"{'variant':<14} {'wall (s)':>9} {'budget':>7} {'ratio':>6}"
    print(f"{header}  mean final top-1 per method; best IoU (permuted)")
    for name, row in rows.items():
        scores = ", ".join(f"{m} {v:.1f}" for m, v in row["mean_final_top1"].items())
        print(
            f"{name:<14} {row['wall_s']:>9.1f} {row['budget_s']:>7.0f} {row['ratio_to_budget']:>6.2f}  {scores}; "
            f"{row['best_iou']:.3f} ({row['permuted_iou']:.3f})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": cpus}
        args.json.write_text(json.dumps({"machine": machine, "variants": rows}, indent=1) + "\n")
        for name, text in logs.items():
            args.json.with_name(f"{args.json.stem}.{name.replace(' --', '_')}.log").write_text(text)


if __name__ == "__main__":
    main()
