"""`wegeft-vision report` and `protocol.report`: paper-style tables from results.csv, checked against hand means."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from wegeft_vision.cli import main
from wegeft_vision.data.registry import FGVC_DATASETS, VTAB_TASKS
from wegeft_vision.protocol.report import build_tables, read_results
from wegeft_vision.protocol.report_files import plot_points, render_markdown, write_report

COLUMNS = ["benchmark", "task", "method", "stage", "lr", "weight_decay", "seed", "epochs", "top1", "params"]
COLUMNS += ["backbone", "preset", "notes", "group", "weights"]  # notes: an extra column the report ignores
GROUPS = {
    g: [name for name, task in VTAB_TASKS.items() if task.group == g] for g in ("natural", "specialized", "structured")
}


def row(task, method, top1, *, benchmark="vtab-1k", stage="final", seed=0, lr=1e-3, wd=1e-4, params=24_576, **extra):
    values = dict(benchmark=benchmark, task=task, method=method, stage=stage, lr=lr, weight_decay=wd, seed=seed)
    values.update(epochs=100, top1=top1, params=params, backbone="vit_b16", preset="in21k", notes="")
    return {**values, **extra}


def write_csv(path, rows, columns=COLUMNS):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def vtab_scores(offset):
    return {name: 50.0 + offset + 1.5 * i for i, name in enumerate(VTAB_TASKS)}


def table_for(tmp_path, rows, benchmark="vtab-1k", stage="final"):
    tables = build_tables(read_results(write_csv(tmp_path / "results.csv", rows)), stage)
    return next(table for table in tables if table.benchmark == benchmark)


def by_method(table):
    return {row.method: row for row in table.rows}


def test_vtab_group_means_and_mean_match_hand_computed(tmp_path):
    scores = {"wegeft": vtab_scores(10.0), "linear": vtab_scores(0.0)}
    rows = [
        row(t, m, s, params=0 if m == "linear" else 24_576) for m, tasks in scores.items() for t, s in tasks.items()
    ]
    table = table_for(tmp_path, rows)
    assert table.columns[:8] == [*GROUPS["natural"], "Natural"]
    assert table.columns[-1] == "Mean" and "Specialized" in table.columns and "Structured" in table.columns
    for method, tasks in scores.items():
        cells = by_method(table)[method].cells
        group_means = [np.mean([tasks[t] for t in GROUPS[g]]) for g in GROUPS]
        for title, expected in zip(("Natural", "Specialized", "Structured"), group_means, strict=True):
            assert cells[title].mean == pytest.approx(expected)
        assert cells["Mean"].mean == pytest.approx(np.mean(group_means))
    assert by_method(table)["wegeft"].params_m == pytest.approx(0.024576)
    markdown = render_markdown(table)
    assert "test top-1 (final)" in markdown and "| wegeft | 0.025 |" in markdown
    assert f"| {scores['wegeft']['cifar']:.1f} |" in markdown  # 1 decimal like the paper


def test_method_missing_a_task_gets_no_group_mean_nor_mean(tmp_path):
    rows = [row(t, "wegeft", s) for t, s in vtab_scores(0).items()]
    rows += [row(t, "lora", s) for t, s in vtab_scores(1).items() if t != "dtd"]
    table = table_for(tmp_path, rows)
    lora = by_method(table)["lora"].cells
    assert "Natural" not in lora and "Mean" not in lora and "dtd" not in lora
    assert lora["Specialized"].mean == pytest.approx(np.mean([vtab_scores(1)[t] for t in GROUPS["specialized"]]))
    lora_line = next(line for line in render_markdown(table).splitlines() if line.startswith("| lora"))
    assert lora_line.count("–") == 3  # dtd, Natural, Mean
    assert "Mean" in by_method(table)["wegeft"].cells


def test_only_present_tasks_are_columns_and_partial_groups_leave_mean_empty(tmp_path):
    table = table_for(tmp_path, [row("cifar", "wegeft", 70.0), row("dtd", "wegeft", 60.0)])
    assert table.columns == ["cifar", "dtd", "Natural", "Mean"]
    cells = by_method(table)["wegeft"].cells
    assert cells["Natural"].mean == pytest.approx(65.0) and "Mean" not in cells


def test_multi_seed_cells_show_mean_and_sample_std(tmp_path):
    seeds = [71.0, 72.5, 74.0]
    rows = [row("cifar", "wegeft", s, seed=i) for i, s in enumerate(seeds)]
    table = table_for(tmp_path, rows)
    cell = by_method(table)["wegeft"].cells["cifar"]
    assert cell.mean == pytest.approx(np.mean(seeds)) and cell.std == pytest.approx(np.std(seeds, ddof=1))
    assert f"{np.mean(seeds):.1f} ± {np.std(seeds, ddof=1):.1f}" in render_markdown(table)
    paths = write_report(read_results(tmp_path / "results.csv"), tmp_path / "out")
    with paths["vtab-1k_final.csv"].open(newline="") as handle:
        record = next(csv.DictReader(handle))
    assert float(record["cifar"]) == pytest.approx(np.mean(seeds))
    assert float(record["cifar_std"]) == pytest.approx(np.std(seeds, ddof=1))
    assert record["n_seeds"] == "3"


def test_identical_duplicates_count_once_and_another_fingerprint_takes_over(tmp_path):
    rows = [row("cifar", "wegeft", 80.0), row("cifar", "wegeft", 80.0), row("cifar", "wegeft", 70.0, seed=1)]
    cell = by_method(table_for(tmp_path, rows))["wegeft"].cells["cifar"]
    assert cell.n == 2 and cell.mean == pytest.approx(75.0)
    rows = [row("cifar", "wegeft", 10.0, fingerprint="a"), row("cifar", "wegeft", 80.0, fingerprint="b")]
    results = write_csv(tmp_path / "results.csv", rows, [*COLUMNS, "fingerprint"])
    (table,) = build_tables(read_results(results))
    assert by_method(table)["wegeft"].cells["cifar"].mean == pytest.approx(80.0)  # the last run of another recipe


def test_rows_of_one_run_that_disagree_are_refused(tmp_path):
    rows = [row("cifar", "wegeft", 10.0), row("cifar", "wegeft", 80.0)]
    with pytest.raises(ValueError, match=r"conflicting rows.*results\.csv, line 2.*top1=10\.0.*line 3.*top1=80\.0"):
        table_for(tmp_path, rows)


def test_search_stage_takes_the_best_of_the_grid_per_seed(tmp_path):
    rows = [
        row("cifar", "wegeft", 60.0, stage="search", seed=0, lr=1e-3),
        row("cifar", "wegeft", 66.0, stage="search", seed=0, lr=1e-2),
        row("cifar", "wegeft", 62.0, stage="search", seed=1, lr=1e-3),
        row("cifar", "wegeft", 58.0, stage="search", seed=1, lr=1e-2),
        row("cifar", "wegeft", 99.0, stage="final"),
    ]
    table = table_for(tmp_path, rows, stage="search")
    assert by_method(table)["wegeft"].cells["cifar"].mean == pytest.approx(np.mean([66.0, 62.0]))
    assert "best validation top-1 (search)" in render_markdown(table)


def test_fgvc_mean_and_unknown_dataset_after_the_registry(tmp_path):
    scores = {name: 80.0 + 2 * i for i, name in enumerate(FGVC_DATASETS)}
    rows = [row(name, "wegeft", s, benchmark="fgvc") for name, s in reversed(scores.items())]
    rows += [row("my_birds", "wegeft", 10.0, benchmark="fgvc"), row("cub", "lora", 85.0, benchmark="fgvc")]
    table = table_for(tmp_path, rows, benchmark="fgvc")
    assert table.columns == [*FGVC_DATASETS, "Mean", "my_birds"]
    assert by_method(table)["wegeft"].cells["Mean"].mean == pytest.approx(np.mean(list(scores.values())))
    assert "Mean" not in by_method(table)["lora"].cells


def test_synthetic_task_goes_to_other_and_into_no_mean(tmp_path):
    rows = [row(t, "wegeft", s) for t, s in vtab_scores(0).items()] + [row("synthetic_shape", "wegeft", 0.0)]
    table = table_for(tmp_path, rows)
    assert table.columns[-1] == "synthetic_shape" and table.columns.index("Structured") < len(table.columns) - 1
    group_means = [np.mean([vtab_scores(0)[t] for t in GROUPS[g]]) for g in GROUPS]
    assert by_method(table)["wegeft"].cells["Mean"].mean == pytest.approx(np.mean(group_means))


def test_folder_tasks_get_their_own_table_with_group_means(tmp_path):
    scores = {"digits": ("natural", 90.0), "flowers": ("natural", 70.0), "textures": ("specialized", 60.0)}
    scores["shapes"] = ("structured", 40.0)
    rows = [row(t, "wegeft", s, benchmark="custom", group=g) for t, (g, s) in scores.items()]
    rows += [row(t, "linear", s - 10, benchmark="custom", group=g, params=0) for t, (g, s) in scores.items()]
    rows += [row("cifar", "wegeft", 70.0)]
    table = table_for(tmp_path, rows, benchmark="custom")
    assert table.title == "Your tasks: test top-1 (final)"
    assert table.columns == ["digits", "flowers", "Natural", "textures", "Specialized", "shapes", "Structured", "Mean"]
    cells = by_method(table)["wegeft"].cells
    assert cells["Natural"].mean == pytest.approx(80.0)
    assert cells["Mean"].mean == pytest.approx((80.0 + 60.0 + 40.0) / 3)  # the mean of the group means
    assert "cifar" not in table.columns  # the registry's tasks stay in the VTAB-1k table
    label, points, skipped = plot_points(table)
    assert label == "Mean top-1 (%)" and not skipped
    assert points == {"wegeft": (pytest.approx(0.024576), pytest.approx(60.0)), "linear": (0.0, pytest.approx(50.0))}


def test_folder_tasks_without_groups_average_over_tasks(tmp_path):
    rows = [row("a", "wegeft", 80.0, benchmark="custom"), row("b", "wegeft", 60.0, benchmark="custom")]
    table = table_for(tmp_path, rows, benchmark="custom")
    assert table.columns == ["a", "b", "Mean"] and by_method(table)["wegeft"].cells["Mean"].mean == 70.0


def test_plot_shows_every_method_for_tasks_outside_the_registry(tmp_path):
    rows = [row("synthetic_shape", m, s, params=p) for m, s, p in (("wegeft", 60.0, 1024), ("linear", 40.0, 0))]
    rows += [row("synthetic_count", m, s, params=p) for m, s, p in (("wegeft", 50.0, 1024), ("linear", 30.0, 0))]
    rows += [row("synthetic_count", "lora", 20.0)]  # no result on synthetic_shape: left out, and named
    table = table_for(tmp_path, rows)
    label, points, skipped = plot_points(table)
    assert label == "mean top-1 over synthetic_count, synthetic_shape (%)"
    assert points == {"wegeft": (pytest.approx(0.001024), 55.0), "linear": (0.0, 35.0)} and skipped == ["lora"]


def test_a_random_init_control_joins_the_pretrained_table_of_its_architecture(tmp_path):
    rows = [row("cifar", "wegeft", 70.0, backbone="vit_b16.augreg", weights="shipped@abc")]
    rows += [row("cifar", "linear_random", 20.0, backbone="vit_b16", weights="random:seed0")]
    (table,) = build_tables(read_results(write_csv(tmp_path / "results.csv", rows)))
    assert not table.warnings and table.setup == "" and set(by_method(table)) == {"wegeft", "linear_random"}
    assert "On a randomly initialized backbone (a control, not compared for mixing): linear_random." in table.notes


def test_each_setup_gets_its_own_tables_named_by_it(tmp_path):
    rows = [row("cifar", "wegeft", 70.0, weights="hub"), row("cifar", "lora", 68.0, weights="hub")]
    rows += [row("cifar", "wegeft", 60.0, backbone="vit_s16", weights="hub")]
    rows += [row("cifar", "linear_random", 20.0, backbone="vit_s16", weights="random:seed0")]
    first, second = build_tables(read_results(write_csv(tmp_path / "results.csv", rows)))
    assert (first.setup, second.setup) == ("vit_b16, weights hub", "vit_s16, weights hub")
    assert first.title == "VTAB-1k: test top-1 (final) — vit_b16, weights hub" and not first.warnings
    assert set(by_method(first)) == {"wegeft", "lora"} and set(by_method(second)) == {"wegeft", "linear_random"}
    assert by_method(second)["wegeft"].cells["cifar"].mean == 60.0
    paths = write_report(read_results(tmp_path / "results.csv"), tmp_path / "out")
    assert len(paths) == 6 and first.setup_slug.startswith("vit_b16-") and first.setup_slug != second.setup_slug
    assert (
        "## VTAB-1k: test top-1 (final) — vit_s16, weights hub"
        in paths[f"vtab-1k_final_{second.setup_slug}.md"].read_text()
    )


def test_one_setup_per_benchmark_keeps_the_plain_titles_and_file_names(tmp_path):
    rows = [row("cifar", "wegeft", 70.0, preprocessing="authors_vtab"), row("cub", "wegeft", 80.0, benchmark="fgvc")]
    results = write_csv(tmp_path / "results.csv", rows, [*COLUMNS, "preprocessing"])
    tables = build_tables(read_results(results))
    assert [(t.title, t.setup_slug) for t in tables] == [
        ("VTAB-1k: test top-1 (final)", ""),
        ("FGVC: test top-1 (final)", ""),
    ]
    assert "vtab-1k_final.md" in write_report(read_results(results), tmp_path / "out")


def test_setups_that_differ_only_in_preprocessing_name_it(tmp_path):
    rows = [row("cifar", "wegeft", 70.0, preprocessing=p) for p in ("paper:resize224", "paper:resize384")]
    tables = build_tables(read_results(write_csv(tmp_path / "results.csv", rows, [*COLUMNS, "preprocessing"])))
    assert [t.setup for t in tables] == [f"vit_b16, preprocessing paper:resize{n}" for n in (224, 384)]


def test_write_report_writes_markdown_csv_and_a_valid_png(tmp_path):
    import matplotlib.image

    rows = [row(t, "wegeft", s) for t, s in vtab_scores(5).items()]
    rows += [row(t, "linear", s, params=0) for t, s in vtab_scores(0).items()] + [
        row("cub", "lora", 80.0, benchmark="fgvc")
    ]
    paths = write_report(read_results(write_csv(tmp_path / "results.csv", rows)), tmp_path / "out")
    assert sorted(paths) == sorted(
        f"{b}_final{suffix}" for b in ("vtab-1k", "fgvc") for suffix in (".md", ".csv", "_accuracy_vs_params.png")
    )
    png = paths["vtab-1k_final_accuracy_vs_params.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_cli_prints_both_tables_and_writes_beside_the_results(tmp_path, capsys):
    rows = [row("cifar", "wegeft", 70.0), row("cub", "wegeft", 80.0, benchmark="fgvc")]
    results = write_csv(tmp_path / "results.csv", rows)
    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "## VTAB-1k: test top-1 (final)" in out and "## FGVC: test top-1 (final)" in out
    assert (tmp_path / "report" / "fgvc_final.md").is_file() and str(tmp_path / "report" / "vtab-1k_final.csv") in out


def test_cli_missing_file_exits_2_naming_it(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_cli_missing_column_exits_2_naming_it(tmp_path, capsys):
    results = write_csv(tmp_path / "results.csv", [row("cifar", "wegeft", 70.0)], [c for c in COLUMNS if c != "top1"])
    assert main(["report", str(results)]) == 2
    assert "top1" in capsys.readouterr().err


def test_non_numeric_top1_names_file_and_line(tmp_path):
    results = write_csv(tmp_path / "results.csv", [row("cifar", "wegeft", 70.0), row("dtd", "wegeft", "oops")])
    with pytest.raises(ValueError, match=r"results\.csv, line 3.*top1"):
        read_results(results)


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "results.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_results(tmp_path / "results.csv")


def test_cli_without_final_rows_hints_at_search(tmp_path, capsys):
    results = write_csv(tmp_path / "results.csv", [row("cifar", "wegeft", 70.0, stage="search")])
    assert main(["report", str(results)]) == 2
    assert "no final rows" in (err := capsys.readouterr().err) and "--stage search" in err
    assert main(["report", str(results), "--stage", "search", "--out", str(tmp_path / "r")]) == 0


def test_measured_cost_is_shown_beside_params_as_medians(tmp_path):
    cost = ["step_ms", "images_per_s", "peak_memory_mb"]
    rows = [
        row("cifar", "wegeft", 70.0, step_ms=10.0, images_per_s=300.0, peak_memory_mb=900.0),
        row("dtd", "wegeft", 60.0, step_ms=30.0, images_per_s=100.0, peak_memory_mb=1100.0),
        row("caltech101", "wegeft", 65.0, step_ms=20.0, images_per_s=200.0, peak_memory_mb=1000.0),
        row("cifar", "linear", 50.0, step_ms="", images_per_s="", peak_memory_mb=""),  # measured by no version
    ]
    path = write_csv(tmp_path / "results.csv", rows, columns=[*COLUMNS, *cost])
    table = next(t for t in build_tables(read_results(path), "final") if t.benchmark == "vtab-1k")
    assert by_method(table)["wegeft"].cost == {"step_ms": 20.0, "images_per_s": 200.0, "peak_memory_mb": 1000.0}
    assert by_method(table)["linear"].cost == {}
    lines = render_markdown(table).splitlines()
    assert lines[2].startswith("| method | params (M) | step (ms) | images/s | peak MiB | cifar |")
    assert "| wegeft | 0.025 | 20.0 | 200.0 | 1,000.0 |" in render_markdown(table)
    assert "| linear | 0.025 | – | – | – |" in render_markdown(table)
    plain = table_for(tmp_path, rows[:1])  # a results file without the columns: no cost columns
    assert "step (ms)" not in render_markdown(plain)
