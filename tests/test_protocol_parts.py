"""The protocol's parts: presets and config composition, results appends, replayable epochs, resume, DDP."""

from __future__ import annotations

import csv
import multiprocessing
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import smoke_final_spec

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic
from wegeft_vision.data.datamodule import EpochShuffle
from wegeft_vision.data.registry import FGVC_DATASETS, VTAB_TASKS
from wegeft_vision.protocol.preset import CONFIG_DIR, load_preset
from wegeft_vision.protocol.results import COLUMNS, append_rows, read_rows
from wegeft_vision.protocol.runs import RunSpec, train_run

WEGEFT_LRS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3)
LORA_LRS = (1e-3, 1.5e-3, 2e-3, 2.5e-3, 5e-3, 1e-2)
WDS = (1e-2, 1e-3, 1e-4, 0.0)


def test_paper_text_preset_differs_only_where_the_text_does():
    code, text = load_preset("paper"), load_preset("paper_text")
    assert text.overrides == {"model.warmup_epochs": 5} and text.final_includes_val
    assert text.methods == code.methods and text.fit_config == code.fit_config
    assert text.fingerprint() != code.fingerprint()


def test_where_data_is_cached_is_not_part_of_the_fingerprint():
    demo = load_preset("demo")
    cached = replace(demo, overrides={**demo.overrides, "data.cache_dir": "/elsewhere/cache"})
    assert cached.fingerprint() == demo.fingerprint()
    assert replace(demo, overrides={"data.batch_size": 8}).fingerprint() != demo.fingerprint()
    control = demo.methods["linear_random"]
    assert control.overrides == {"model.pretrained": False, "model.weights": None}
    assert control.config == demo.methods["linear"].config and control.points == demo.methods["linear"].points
    without = replace(demo, methods={**demo.methods, "linear_random": replace(control, overrides={})})
    assert without.fingerprint() != demo.fingerprint()  # a method's own overrides are part of the recipe


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"name": "x", "fit_config": "../fit/smoke.yaml", "search_epochs": 2, "methods": {}, "typo": 1},
            "unknown keys",
        ),
        ({"name": "x", "fit_config": "../fit/smoke.yaml", "methods": {}}, "missing key 'search_epochs'"),
        ({"name": "x", "fit_config": "../fit/nope.yaml", "search_epochs": 2, "methods": {}}, "nope.yaml"),
        (
            {
                "name": "x",
                "fit_config": "../fit/smoke.yaml",
                "search_epochs": 2,
                "methods": {"w": {"config": "../method/wegeft_r16.yaml", "lr": [1e-3, 1e-3], "weight_decay": [0]}},
            },
            "distinct",
        ),
        (
            {
                "name": "x",
                "fit_config": "../fit/smoke.yaml",
                "search_epochs": 2,
                "methods": {"w": {"config": "../method/none.yaml", "lr": [1e-3], "weight_decay": [0]}},
            },
            "none.yaml",
        ),
    ],
)
def test_bad_presets_name_the_file_and_key(tmp_path, content, message):
    folder = tmp_path / "protocol"
    shutil.copytree(CONFIG_DIR / "fit", tmp_path / "fit")
    shutil.copytree(CONFIG_DIR / "method", tmp_path / "method")
    folder.mkdir()
    (folder / "bad.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        load_preset(folder / "bad.yaml")
    assert "bad.yaml" in str(error.value)


def test_unknown_preset_name_lists_the_bundled_ones():
    with pytest.raises(FileNotFoundError, match="paper, paper_text, smoke"):
        load_preset("papr")


def test_one_data_config_per_task_and_dataset():
    assert sorted(p.stem for p in (CONFIG_DIR / "data" / "vtab-1k").glob("*.yaml")) == sorted(VTAB_TASKS)
    assert sorted(p.stem for p in (CONFIG_DIR / "data" / "fgvc").glob("*.yaml")) == sorted(FGVC_DATASETS)


@pytest.mark.parametrize("dataset", ["vtab-1k/dsprites_ori", "fgvc/stanfordcars"])
def test_fit_configs_compose_with_data_and_method_configs(dataset, tmp_path, capsys):
    benchmark, name = dataset.split("/")
    args = [
        "fit",
        "--config",
        str(CONFIG_DIR / "fit" / "paper.yaml"),
        "--config",
        str(CONFIG_DIR / "data" / benchmark / f"{name}.yaml"),
        "--model.method",
        str(CONFIG_DIR / "method" / "lora_r8.yaml"),
        "--data.root",
        str(tmp_path),
        "--data.batch_size",
        "32",
        "--print_config",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["dataset"] == dataset and config["data"]["batch_size"] == 32  # the last word wins
    assert config["model"]["epochs"] == 100 and config["model"]["method"]["class_path"].endswith("LoRAConfig")
    assert any(c["class_path"].endswith("EpochSeed") for c in config["trainer"]["callbacks"])


def test_append_rows_writes_each_key_once(tmp_path):
    path = tmp_path / "results.csv"
    row = {
        "benchmark": "vtab-1k",
        "task": "dtd",
        "method": "wegeft",
        "stage": "search",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "seed": 0,
        "top1": 50.0,
        "fingerprint": "abc",
    }
    assert append_rows(path, [row, row]) == 1
    assert append_rows(path, [row, {**row, "lr": 5e-3}]) == 1
    rows = read_rows(path)
    assert [r["lr"] for r in rows] == ["0.001", "0.005"] and list(rows[0]) == list(COLUMNS)
    assert path.read_text().count("benchmark,task") == 1


def test_append_rows_refuses_a_file_with_unknown_columns(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="results.csv: unknown column.*a, b"):
        append_rows(path, [{"benchmark": "fgvc", "top1": 50.0}])
    assert path.read_text() == "a,b\n1,2\n"  # nothing written is lost


def test_append_rows_upgrades_a_file_of_an_earlier_version(tmp_path):
    path = tmp_path / "results.csv"
    old = [c for c in COLUMNS if c not in ("group", "state", "reason")]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({**dict.fromkeys(old, "x"), "lr": "0.001", "top1": "61.5"})
    row = {**dict.fromkeys(COLUMNS, "y"), "top1": 70.0, "state": "finished"}
    assert append_rows(path, [row]) == 1
    first, second = read_rows(path)
    assert list(first) == list(COLUMNS) and first["state"] == "finished" and first["group"] == ""
    assert first["top1"] == "61.5" and first["lr"] == "0.001" and second["top1"] == "70.0"


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    data = list(range(50))
    first = EpochShuffle(data, seed=3)
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == data for o in orders)
    replay = EpochShuffle(data, seed=3)
    replay.set_epoch(2)
    assert list(replay) == orders[2]  # a resumed run sees the same order at the same epoch
    other = EpochShuffle(data, seed=4)
    other.set_epoch(2)
    assert list(other) != orders[2]


@pytest.fixture(scope="module")
def task_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, "shape", {"train800": 48, "val200": 16, "test": 24}, size=32)
    return root


def final_spec(root: Path, **changes) -> RunSpec:
    return smoke_final_spec(root, **changes)


@pytest.mark.slow
def test_a_run_on_two_processes_with_ddp(task_root, tmp_path):
    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork"):
        pytest.skip("needs a spawn-capable multiprocessing context")
    row = train_run(final_spec(task_root, devices=2), tmp_path)
    assert row["batch_size"] == 16 and row["epochs"] == 4 and row["eval_size"] == 24  # every test image once
    assert 0.0 <= row["top1"] <= 100.0


AT_EXIT = """
import atexit, sys
import torch.distributed as dist
from wegeft_vision.training import ClassificationModule
atexit.register(lambda: print("group left at exit:", dist.is_initialized(), flush=True))  # runs after the module's
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
tiny = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
module = ClassificationModule(3, {"method": "linear"}, backbone="vit_base_patch16_224", pretrained=False,
                              backbone_overrides=tiny)
module.setup("fit")
"""


def test_a_distributed_process_destroys_its_process_group_before_the_interpreter_exits(tmp_path):
    # gloo groups left to the interpreter's finalization abort their process now and then, after a finished run
    done = subprocess.run([sys.executable, "-c", AT_EXIT, str(tmp_path / "store")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "group left at exit: False"


def test_precision_option_reaches_the_trainer_and_the_row(task_root, tmp_path):
    row = train_run(final_spec(task_root, overrides={"trainer.precision": "bf16-mixed"}), tmp_path)
    assert row["precision"] == "bf16-mixed" and 0.0 <= row["top1"] <= 100.0


def test_gpu_list_must_split_into_ddp_groups(tmp_path, capsys):
    out = ["--config", "smoke", "--out", str(tmp_path), "--gpus", "0,1,2", "--devices", "2"]
    assert main(["protocol", *out]) == 2
    assert "does not split into workers of --devices 2" in capsys.readouterr().err


def test_a_torn_checkpoint_restarts_the_run(task_root, tmp_path):
    spec = final_spec(task_root)
    whole = train_run(spec, tmp_path / "whole")
    last = spec.run_dir(tmp_path / "torn") / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 cut short")  # what a kill in the middle of a checkpoint write leaves
    assert train_run(spec, tmp_path / "torn")["top1"] == whole["top1"]


@pytest.mark.parametrize("stages", [("search", "final"), ("search",)])
def test_a_worker_command_parses_back_into_its_request(tmp_path, stages):
    """Workers are `wegeft-vision protocol|search` processes: their command line, parsed as the CLI parses it, is the
    very request they were started for (recipe settings of every YAML type included)."""
    import argparse

    from wegeft_vision.cli import protocol as protocol_cli
    from wegeft_vision.protocol.launch import Request
    from wegeft_vision.protocol.workers import worker_command

    overrides = {
        "model.warmup_lr": 1e-07,
        "trainer.precision": "bf16-mixed",
        "data.cache_dir": str(tmp_path / "a cache: here"),
        "model.pretrained": False,
        "model.weights": None,
        "model.backbone_overrides": {"img_size": 32, "depth": 2},
        "data.preset": "true",
    }
    request = Request(
        preset=tmp_path / "preset.yaml",
        out=tmp_path / "out",
        benchmark="fgvc",
        tasks=["cub", str(tmp_path / "mine")],
        methods=["wegeft", "lora"],
        seeds=[0, 3],
        data_root=tmp_path / "data",
        splits_dir=tmp_path / "splits",
        storage="journal:/tmp/x.log",
        overrides=overrides,
        final_includes_val=False,
        stages=stages,
        devices=2,
        progress=False,
        poll=0.25,
        heartbeat=7,
        checkpoint_every=3,
        pack=4,
    )
    command = worker_command(request)
    assert command[0] == ("protocol" if "final" in stages else "search")
    parser = argparse.ArgumentParser()
    protocol_cli.add_parser(parser)
    args = parser.parse_args(command[1:])
    assert args.worker and protocol_cli.request_of(args, stages) == replace(request, preset=str(request.preset))
