"""The search-then-final protocol end to end on the smoke preset: rows, selection on val, report, resume, workers."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file

from wegeft_vision.cli import main
from wegeft_vision.protocol.preset import load_preset
from wegeft_vision.protocol.results import KEY, row_key

SMOKE = ["--config", "smoke", "--no-progress", "--poll", "0.5"]
SEARCH_RUNS, FINAL_RUNS = 16, 4  # 2 tasks x 2 methods x (2 x 2 grid), and one final per task x method


def rows_of(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def finals(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["task"], r["method"]): r for r in rows_of(out) if r["stage"] == "final"}


def search_studies(out: Path) -> list[optuna.Study]:
    storage = f"sqlite:///{out / 'optuna.db'}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage) if "/search@" in s.study_name]
    return [optuna.load_study(study_name=name, storage=storage) for name in names]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    assert main(["protocol", *SMOKE, "--out", str(out)]) == 0
    return out


def test_smoke_protocol_writes_one_row_per_run(smoke):
    rows = rows_of(smoke)
    assert len(rows) == SEARCH_RUNS + FINAL_RUNS
    assert len({row_key(r) for r in rows}) == len(rows)
    for column in (
        "benchmark",
        "task",
        "method",
        "stage",
        "lr",
        "weight_decay",
        "seed",
        "epochs",
        "top1",
        "params",
        "backbone",
        "preset",
    ):
        assert all(r[column] != "" for r in rows), column
    assert {(r["benchmark"], r["task"]) for r in rows} == {("vtab-1k", "synthetic_shape"), ("fgvc", "synthetic_colour")}
    assert {r["preset"] for r in rows} == {"smoke"} and {r["weights"] for r in rows} == {"random:seed0"}
    assert {r["preprocessing"] for r in rows} == {
        "paper:resize32:size32:bicubic:crop1 mean=(0.5,0.5,0.5) std=(0.5,0.5,0.5)"
    }
    assert {r["epochs"] for r in rows if r["stage"] == "search"} == {"2"}  # stopped early on the 4-epoch schedule
    assert {r["epochs"] for r in rows if r["stage"] == "final"} == {"4"}
    assert {r["schedule_epochs"] for r in rows} == {"4"}
    params = {r["method"]: int(r["params"]) for r in rows}
    assert params == {"wegeft": 32 * 16 * 2, "linear": 0}  # one shared (phi, psi) pair of 32 x 16, head excluded


def test_selection_uses_validation_only(smoke):
    preset = load_preset("smoke")
    rows = rows_of(smoke)
    for (task, method), final in finals(smoke).items():
        search = [r for r in rows if r["stage"] == "search" and r["task"] == task and r["method"] == method]
        assert {r["eval_split"] for r in search} <= {"val200", "val"}  # search never sees test
        assert final["eval_split"] == "test"
        points = preset.methods[method].points
        val = {(float(r["lr"]), float(r["weight_decay"])): float(r["top1"]) for r in search}
        expected = max(points, key=lambda p: (val[p], -points.index(p)))  # best val, ties: earlier grid point
        assert (float(final["lr"]), float(final["weight_decay"])) == expected
        selection = json.loads(
            (smoke / "runs" / final["benchmark"] / task / method / "seed0/selection.json").read_text()
        )
        assert selection["selected"]["val_top1"] == pytest.approx(val[expected])
    shape_final = finals(smoke)[("synthetic_shape", "wegeft")]
    assert shape_final["train_splits"] == "train800val200"
    assert finals(smoke)[("synthetic_colour", "wegeft")]["train_splits"] == "train"  # the authors' code: no val


def test_search_is_the_final_schedule_truncated(smoke):
    def lrs(run: Path) -> list[float]:
        with (run / "metrics.csv").open() as handle:
            return [float(r["train/lr"]) for r in csv.DictReader(handle) if r.get("train/lr")]

    final = finals(smoke)[("synthetic_shape", "wegeft")]
    search = smoke / final["run_dir"].replace("/final/", "/search/")
    final_lrs, search_lrs = lrs(smoke / final["run_dir"]), lrs(search)
    assert len(search_lrs) == 2 and len(final_lrs) == 4
    assert search_lrs == pytest.approx(final_lrs[:2])
    peak, floor = float(final["lr"]), 1e-6  # warmup 1 epoch from 1e-7, then timm's cosine over all 4 epochs
    cosine = [floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t / 4)) for t in range(1, 4)]
    assert final_lrs == pytest.approx([1e-7, *cosine], rel=1e-6)


def test_final_run_keeps_its_adapter(smoke):
    final = finals(smoke)[("synthetic_shape", "wegeft")]
    run = smoke / final["run_dir"]
    sidecar = json.loads((run / "adapter.json").read_text())
    assert sidecar["config"]["method"] == "wegeft"
    assert sidecar["extra"]["result"]["top1"] == pytest.approx(float(final["top1"]))
    assert not (run / "checkpoints").exists()  # optimizer state dropped once the run is done


def test_visualize_rebuilds_a_protocol_adapter_offline(smoke, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    run = smoke / finals(smoke)[("synthetic_shape", "wegeft")]["run_dir"]
    assert json.loads((run / "adapter.json").read_text())["backbone"]["weights"] == {"kind": "random", "seed": 0}
    args = ["visualize", "--adapter", str(run / "adapter.safetensors"), "--data-root", str(smoke / "data")]
    args += ["--benchmark", "vtab-1k", "--task", "synthetic_shape", "--split", "test", "--limit", "4", "--score"]
    assert main([*args, "--mosaic-images", "2", "--out", str(tmp_path / "maps")]) == 0  # no hub, no --random-weights
    assert len(list((tmp_path / "maps" / "images").glob("*.png"))) == 4
    assert "target: best block" in capsys.readouterr().out


def test_report_prints_both_tables(smoke, capsys):
    assert main(["report", str(smoke / "results.csv"), "--out", str(smoke / "report")]) == 0
    printed = capsys.readouterr().out
    assert "VTAB-1k" in printed and "FGVC" in printed
    assert (smoke / "report" / "vtab-1k_final.csv").is_file()
    assert (smoke / "report" / "fgvc_final_accuracy_vs_params.png").is_file()


def test_rerun_changes_nothing(smoke):
    before = (smoke / "results.csv").read_bytes()
    trials = sum(len(s.trials) for s in search_studies(smoke))
    assert main(["protocol", *SMOKE, "--out", str(smoke)]) == 0
    assert (smoke / "results.csv").read_bytes() == before
    assert sum(len(s.trials) for s in search_studies(smoke)) == trials


def test_resume_after_a_killed_protocol_matches_an_uninterrupted_run(smoke, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "wegeft_vision.cli", "protocol", *SMOKE, "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "results.csv").is_file() and len(rows_of(out)) >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the protocol finished before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {r["run_dir"]: os.stat(out / r["run_dir"] / "result.json").st_mtime_ns for r in rows_of(out)}
    assert 5 <= len(done_before) < SEARCH_RUNS

    assert main(["protocol", *SMOKE, "--out", str(out)]) == 0
    rows = rows_of(out)
    assert len(rows) == SEARCH_RUNS + FINAL_RUNS and len({row_key(r) for r in rows}) == len(rows)
    for run_dir, mtime in done_before.items():  # finished runs were not trained again
        assert os.stat(out / run_dir / "result.json").st_mtime_ns == mtime
    for study in search_studies(out):
        complete = [(t.params["lr"], t.params["weight_decay"]) for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(complete) == len(set(complete)) == 4
    keep = ("lr", "weight_decay", "top1", "train_splits", "eval_size")
    resumed = {k: {c: r[c] for c in keep} for k, r in finals(out).items()}
    assert resumed == {k: {c: r[c] for c in keep} for k, r in finals(smoke).items()}


def test_two_workers_share_one_study_without_losing_or_repeating_a_point(smoke, tmp_path):
    out = tmp_path / "workers"
    assert main(["protocol", *SMOKE, "--out", str(out), "--workers", "2"]) == 0
    rows = rows_of(out)
    assert len(rows) == SEARCH_RUNS + FINAL_RUNS and len({row_key(r) for r in rows}) == len(rows)
    workers = set()
    for study in search_studies(out):
        trained = [t for t in study.trials if "result" in t.user_attrs]  # a trial that trained stores its row
        points = [(t.params["lr"], t.params["weight_decay"]) for t in trained]
        assert len(points) == len(set(points)) == 4 and {t.state for t in trained} == {TrialState.COMPLETE}
        for late in (t for t in study.trials if t not in trained):  # a point claimed in a race: pruned untrained
            assert late.state == TrialState.PRUNED
            winner = study.trials[late.user_attrs["duplicate_of"]]
            assert winner.state == TrialState.COMPLETE and winner.params == late.params
        workers |= {t.user_attrs["worker"] for t in trained}
    assert len(workers) == 2  # both processes trained grid points
    keep = ("lr", "weight_decay", "top1")
    assert {k: {c: r[c] for c in keep} for k, r in finals(out).items()} == {
        k: {c: r[c] for c in keep} for k, r in finals(smoke).items()
    }


def test_a_packed_protocol_gives_the_unpacked_results(smoke, tmp_path, capsys):
    """`--pack 4` trains each unit's 4 search points in one run: every row, selection and final adapter is the one of
    `--pack 1` (here, in fp32, to the bit); each point keeps its own folder and `result.json`; two workers claim whole
    packs; `--dry-run` lists the packs."""
    out = tmp_path / "packed"
    assert main(["protocol", *SMOKE, "--out", str(out), "--pack", "4", "--workers", "2"]) == 0
    same = ("top1", "best_top1", "best_epoch", "state", "epochs", "params", "run_dir")
    packed, alone = ({row_key(r)[:-1]: r for r in rows_of(o)} for o in (out, smoke))
    assert packed.keys() == alone.keys()
    for key, row in packed.items():
        assert {c: row[c] for c in same} == {c: alone[key][c] for c in same}, key
        assert row["pack"] == ("4" if row["stage"] == "search" else "1")
        assert float(row["step_ms"]) > 0 and float(row["images_per_s"]) > 0 and float(row["peak_memory_mb"]) > 0
        record = json.loads((out / row["run_dir"] / "result.json").read_text())
        assert record["row"]["top1"] == float(row["top1"]) and ("pack" in record) == (row["stage"] == "search")
    for final in finals(out).values():
        mine = load_file(out / final["run_dir"] / "adapter.safetensors")
        theirs = load_file(smoke / final["run_dir"] / "adapter.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        folder = (out / final["run_dir"]).parents[1]
        assert (
            json.loads((folder / "selection.json").read_text())["selected"]
            == json.loads((smoke / final["run_dir"]).parents[1].joinpath("selection.json").read_text())["selected"]
        )
        (pack,) = (folder / "search").glob("pack-*")
        points = yaml.safe_load((pack / "config.yaml").read_text())["model"]["pack"]
        assert len(points) == 4 and not (pack / "checkpoints").exists()
    for study in search_studies(out):  # one worker claimed each unit's four points
        trained = [t for t in study.trials if "result" in t.user_attrs]
        assert len(trained) == 4 and len({t.user_attrs["worker"] for t in trained}) == 1
    capsys.readouterr()
    assert main(["protocol", *SMOKE, "--out", str(tmp_path / "plan"), "--pack", "4", "--dry-run"]) == 0
    assert "packed: 8 trainings" in capsys.readouterr().out
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert {r["pack"] for r in plan if r["stage"] == "search"} == {"1/1"}


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_pack_is_refused(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(["protocol", *SMOKE, "--out", str(tmp_path), "--pack", value])
    assert stop.value.code == 2
    assert f"--pack expects a number >= 1 or auto, got '{value}'" in capsys.readouterr().err


def test_a_changed_recipe_needs_a_new_run_folder(smoke, capsys):
    assert main(["protocol", *SMOKE, "--out", str(smoke), "--set", "model.drop_path=0.0"]) == 2
    assert "protocol.json" in capsys.readouterr().err


def test_unknown_method_is_refused(tmp_path, capsys):
    assert main(["protocol", *SMOKE, "--out", str(tmp_path), "--methods", "wegeft", "dora"]) == 2
    assert "unknown method 'dora'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.lr=0.5"], "--set model.lr=0.5: every run sets model.lr from the grid's lr"),
        (["--set", "data.root=/x"], "--set data.root='/x': every run sets data.root from --data-root"),
        (["--set", "model.lrr=0.5"], "does not parse: Group 'model' does not accept option 'lrr'"),
        (["--precision", "17"], 'does not parse: Parser key "trainer.precision"'),
        (["--set", "data.batch_size=many"], "Parser key \"data.batch_size\": Expected a <class 'int'>"),
        (["--data-root", "/no/such/root"], "--data-root /no/such/root does not exist"),
    ],
)
def test_bad_inputs_exit_2_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["protocol", *SMOKE, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "interrupted" not in err
    # nothing pinned (protocol.json), no study, no run folder: the corrected command uses the same --out (the smoke
    # preset's generated tasks may already be in OUT/data)
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) in ([], ["data"])
    assert not Path("/no/such/root").exists()


def test_results_key_covers_the_grid_point():
    assert {"lr", "weight_decay", "seed", "stage", "method", "task"} <= set(KEY)


def test_search_workers_then_protocol_on_a_journal_storage(tmp_path):
    out, journal = tmp_path / "journal", tmp_path / "shared" / "studies.log"
    journal.parent.mkdir()
    options = [*SMOKE, "--out", str(out), "--storage", f"journal:{journal}", "--tasks", "vtab-1k/synthetic_shape"]
    assert main(["search", *options, "--methods", "linear"]) == 0
    assert {r["stage"] for r in rows_of(out)} == {"search"} and len(rows_of(out)) == 4
    searched = {r["run_dir"]: os.stat(out / r["run_dir"] / "result.json").st_mtime_ns for r in rows_of(out)}
    assert main(["protocol", *options, "--methods", "linear"]) == 0
    assert [r["stage"] for r in rows_of(out)] == ["search"] * 4 + ["final"]
    assert all(os.stat(out / d / "result.json").st_mtime_ns == t for d, t in searched.items())
    assert journal.stat().st_size > 0 and not (out / "optuna.db").exists()


@pytest.mark.parametrize(
    ("benchmark", "task", "message"), [("vtab-1k", "dtd", "tried dtd, textures"), ("fgvc", "cub", "cub")]
)
def test_missing_task_folders_fail_before_any_training(tmp_path, capsys, benchmark, task, message):
    options = ["--benchmark", benchmark, "--tasks", task, "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["protocol", "--no-progress", *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.csv").exists()


def test_an_interrupted_final_run_is_redone(smoke, tmp_path, monkeypatch):
    from wegeft_vision.protocol import runner

    train_pack = runner.train_pack

    def interrupted_final(specs, out):
        if specs[0].stage == "final":
            raise KeyboardInterrupt
        return train_pack(specs, out)

    options = ["protocol", *SMOKE, "--out", str(tmp_path), "--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]
    monkeypatch.setattr(runner, "train_pack", interrupted_final)
    assert main(options) == 130
    assert [r["stage"] for r in rows_of(tmp_path)] == ["search"] * 4
    monkeypatch.setattr(runner, "train_pack", train_pack)
    assert main(options) == 0
    rows = rows_of(tmp_path)
    assert [r["stage"] for r in rows] == ["search"] * 4 + ["final"]
    assert rows[-1]["top1"] == finals(smoke)[("synthetic_shape", "linear")]["top1"]
