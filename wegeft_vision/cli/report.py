"""`wegeft-vision report` tabulates the protocol's results.csv files like the paper's tables (VTAB-1k, FGVC), one set
of tables per setup (backbone, weights, preprocessing)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .protocol import STAGES


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.csv", help="results file(s) of the protocol")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="final",
        help="final: mean test top-1 over seeds; search: best validation top-1 over the grid (default: final)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: report/ beside the first results file)")


def run(args: argparse.Namespace) -> int:
    from ..protocol.report import build_tables, read_results
    from ..protocol.report_files import render_markdown, write_tables
    from ..protocol.results import TornRowWarning

    with warnings.catch_warnings(record=True) as caught:  # torn rows (a crash mid-write): skipped, one line each
        warnings.simplefilter("always", TornRowWarning)
        rows = read_results(args.results)
    for warning in caught:
        print(f"wegeft-vision report: warning: {warning.message}", file=sys.stderr)
    tables = build_tables(rows, args.stage)
    setups = list(dict.fromkeys(table.setup for table in tables if table.setup))
    if setups:  # rows of several setups: never mixed, each table names its own
        print(f"Results of {len(setups)} setup(s) (backbone, weights, preprocessing), each in tables of its own.\n")
    for table in tables:
        print(render_markdown(table))
        for warning in table.warnings:
            print(f"wegeft-vision report: warning: {warning}", file=sys.stderr)
    paths = write_tables(tables, args.out or args.results[0].parent / "report")
    print("Wrote:")
    for path in paths.values():
        print(f"  {path}")
    return 0
