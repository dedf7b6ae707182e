"""The report's files: each table as Markdown, CSV and an accuracy-vs-parameters plot (`report.build_tables`)."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from ..files import write_atomic
from .report import BENCHMARK_TITLES, COST, MEAN, PARAMS, PLOT_FLOOR, Cell, Table, build_tables


def _format_cell(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    return f"{cell.mean:.1f} ± {cell.std:.1f}" if cell.std is not None else f"{cell.mean:.1f}"


def _cost_columns(table: Table) -> list[str]:
    """The measured-cost columns some row of the table has (none for results of versions that did not measure)."""
    return [c for c in COST if any(c in row.cost for row in table.rows)]


def render_markdown(table: Table) -> str:
    """The table as Markdown: a heading, one row per method (accuracies with 1 decimal), notes, diverged runs and
    warnings."""
    cost = _cost_columns(table)
    header = ["method", PARAMS, *(COST[c] for c in cost), *table.columns]
    lines = [f"## {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        measured = [f"{row.cost[c]:,.1f}" if c in row.cost else "–" for c in cost]
        cells = [
            row.method,
            f"{row.params_m:.3f}",
            *measured,
            *(_format_cell(row.cells.get(col)) for col in table.columns),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({row.n_seeds for row in table.rows})
    lines += [
        "",
        f"Seeds per method: {', '.join(map(str, seeds))}"
        + ("; cells read mean ± sample std." if seeds[-1] > 1 else "."),
    ]
    if cost:
        lines.append(
            f"- {', '.join(COST[c] for c in cost)}: medians over each method's runs as measured in training "
            "(a packed run counts the images of all its points; peak memory: GPU allocator, or the process on CPU)."
        )
    lines += [f"- {note}" for note in table.notes]
    lines += [f"- diverged: {run}" for run in table.diverged]
    lines += [f"> **Warning:** {warning}" for warning in table.warnings]
    return "\n".join(lines) + "\n"


def table_records(table: Table) -> tuple[list[str], list[list]]:
    """The CSV header and rows: method, params (M), n_seeds, then `<col>` and `<col>_std` at full precision."""
    cost = _cost_columns(table)
    header = ["method", PARAMS, "n_seeds", *cost] + [name for col in table.columns for name in (col, f"{col}_std")]
    records = []
    for row in table.rows:
        record: list = [row.method, row.params_m, row.n_seeds, *(row.cost.get(c, "") for c in cost)]
        for col in table.columns:
            cell = row.cells.get(col)
            record += ["", ""] if cell is None else [cell.mean, "" if cell.std is None else cell.std]
        records.append(record)
    return header, records


def plot_points(table: Table) -> tuple[str, dict[str, tuple[float, float]], list[str]]:
    """What the accuracy-vs-parameters plot shows: its y label, {method: (params (M), accuracy)}, and the methods
    left out. The accuracy is `Mean` where the table has it, else the mean over the table's tasks (synthetic or other
    tasks outside the registry, which are in no `Mean`); a method without a result for some task is left out."""
    points, skipped = {}, []
    use_mean = any(MEAN in row.cells for row in table.rows)
    for row in table.rows:
        if use_mean:
            value = row.cells[MEAN].mean if MEAN in row.cells else None
        else:
            scores = [row.cells[task].mean for task in table.tasks if task in row.cells]
            value = statistics.fmean(scores) if scores and len(scores) == len(table.tasks) else None
        if value is None:
            skipped.append(row.method)
        else:
            points[row.method] = (row.params_m, value)
    label = f"{MEAN} top-1 (%)" if use_mean else f"mean top-1 over {', '.join(table.tasks)} (%)"
    return label, points, skipped


def plot_accuracy_vs_params(table: Table, path: str | Path) -> list[str]:
    """Scatter each method's accuracy (see `plot_points`) against its trainable parameters (log x); save as PNG.

    Returns:
        The methods left out; the figure names them too.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    label, points, skipped = plot_points(table)
    for method, (params_m, accuracy) in points.items():
        x = max(params_m, PLOT_FLOOR)
        ax.scatter([x], [accuracy])
        ax.annotate(method, (x, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=9)
    ax.set_xscale("log")
    ax.margins(0.15)  # room for the labels of the outermost points
    ax.set_xlabel(f"trainable parameters without head (M, log scale; below {PLOT_FLOOR:g} drawn at {PLOT_FLOOR:g})")
    ax.set_ylabel(label)
    ax.set_title(f"{BENCHMARK_TITLES[table.benchmark]} ({table.stage}): top-1 vs trainable parameters")
    if table.setup:
        fig.suptitle(table.setup, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if skipped:
        ax.text(0.01, 0.01, f"missing results (not shown): {', '.join(skipped)}", transform=ax.transAxes, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(Path(path), buffer.getvalue())
    return skipped


def write_tables(tables: list[Table], out_dir: str | Path) -> dict[str, Path]:
    """Write `<benchmark>_<stage>.md`, `.csv` and `_accuracy_vs_params.png` for each table, each atomically; where
    a benchmark's rows hold several setups, `<benchmark>_<stage>_<setup>` (`Table.setup_slug`: backbone and digest).

    Returns:
        The written paths, keyed by file name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in tables:
        stem = "_".join(part for part in (table.benchmark, table.stage, table.setup_slug) if part)
        md, csv_path, png = (out_dir / f"{stem}{suffix}" for suffix in (".md", ".csv", "_accuracy_vs_params.png"))
        write_atomic(md, render_markdown(table))
        header, records = table_records(table)
        text = io.StringIO(newline="")
        csv.writer(text).writerows([header, *records])
        write_atomic(csv_path, text.getvalue())
        plot_accuracy_vs_params(table, png)
        paths.update({path.name: path for path in (md, csv_path, png)})
    return paths


def write_report(rows: list[dict], out_dir: str | Path, stage: str = "final") -> dict[str, Path]:
    """Build the tables of `stage` from `rows` and write them to `out_dir` (see `build_tables`, `write_tables`)."""
    return write_tables(build_tables(rows, stage), out_dir)
