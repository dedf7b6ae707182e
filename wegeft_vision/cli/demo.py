"""`wegeft-vision demo`: the main job for real, offline, on 2 CPU cores in minutes.

    wegeft-vision demo                     # three tasks, WeGeFT, LoRA, BitFit, linear probes: at most 5 minutes
    wegeft-vision demo --quick             # one task, one grid point per method: at most 1 minute

What it does: `wegeft_vision.demo.run` (tasks, protocol, report, heatmaps, verdicts). Rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true", help="one task (shapes_position), one point per method")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, one CPU thread each (default: 2, for 2 cores)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no Lightning progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo

    progress = not args.no_progress and sys.stdout.isatty()
    return run_demo(args.out, quick=args.quick, workers=args.workers, progress=progress)
