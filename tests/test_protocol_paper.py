"""The `paper` preset against the authors' released code (github.com/savadikarc/gift), checked on what the runs would
resolve (`protocol --dry-run` and its plan.json), not on the YAML text; the selection record; weight-decay groups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import TINY_VIT, smoke_final_spec

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic
from wegeft_vision.methods import config_from_yaml
from wegeft_vision.protocol.preset import CONFIG_DIR, load_preset
from wegeft_vision.protocol.runs import train_run
from wegeft_vision.training import ClassificationModule

METHODS = ["wegeft", "lora", "bitfit", "vpt"]
GIFT_LRS = [1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3]
WDS = [1e-2, 1e-3, 1e-4, 0.0]
BASELINE_LRS = {  # tune_vtab_{lora,bitfit,vpt}.sh and tune_fgvc_{lora,bitfit,vpt}.sh
    "vtab-1k": [5e-4, 1e-3, 1.5e-3, 2.5e-3, 5e-3, 1e-2],
    "fgvc": [1e-3, 1.5e-3, 2e-3, 2.5e-3, 5e-3, 1e-2],
}


def dry_run(tmp: Path, benchmark: str, tasks: str, *extra: str) -> list[dict]:
    out = tmp / benchmark
    args = ["protocol", "--benchmark", benchmark, "--tasks", tasks, "--methods", *METHODS, "--dry-run"]
    assert main([*args, "--out", str(out), *extra]) == 0
    return json.loads((out / "plan.json").read_text())


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("plans")
    return {"vtab-1k": dry_run(tmp, "vtab-1k", "all"), "fgvc": dry_run(tmp, "fgvc", "all")}


def runs(plan: list[dict], **where) -> list[dict]:
    return [r for r in plan if all(r[k] == v for k, v in where.items())]


def test_the_plan_covers_every_task_method_and_grid_point(plans):
    vtab, fgvc = plans["vtab-1k"], plans["fgvc"]
    assert len({r["task"] for r in vtab}) == 19 and len({r["task"] for r in fgvc}) == 5
    per_task = 24 + 24 + 6 + 6 + 4  # searches of wegeft, lora (6 x 4), bitfit, vpt (6 x 1), and four finals
    assert len(vtab) == 19 * per_task and len(fgvc) == 5 * per_task
    keys = {"benchmark", "task", "method", "stage", "lr", "weight_decay", "seed", "epochs", "schedule_epochs"}
    keys |= {"warmup_epochs", "batch_size", "train_split", "eval_split", "train_transform", "eval_transform"}
    keys |= {"method_config", "no_weight_decay", "precision"}
    assert all(keys <= set(r) for r in vtab + fgvc)


@pytest.mark.parametrize("benchmark", ["vtab-1k", "fgvc"])
def test_batch_32_schedule_seed_and_numerics(plans, benchmark):
    for run in plans[benchmark]:
        assert run["batch_size"] == 32  # cfg.DATA.BATCH_SIZE; the YAMLs' 64 never reaches a loader
        assert (run["schedule_epochs"], run["warmup_epochs"]) == (100, 10)
        assert run["seed"] == 42
        assert run["precision"] == "32-true (fp32 matmuls: high)"  # fp32 with allow_tf32 = True
        assert run["no_weight_decay"].startswith("1-D tensors, biases and PaCa")
        assert run["drop_path"] == 0.1


@pytest.mark.parametrize(("benchmark", "search_epochs"), [("vtab-1k", 50), ("fgvc", 25)])
def test_search_length_and_splits(plans, benchmark, search_epochs):
    plan = plans[benchmark]
    assert {r["epochs"] for r in runs(plan, stage="search")} == {search_epochs}
    assert {r["epochs"] for r in runs(plan, stage="final")} == {100}
    search, final = (
        (("train800", "val200"), ("train800val200", "test"))
        if benchmark == "vtab-1k"
        else (
            ("train", "val"),
            ("train", "test"),  # the authors' code trains FGVC's final run on train only
        )
    )
    assert {(r["train_split"], r["eval_split"]) for r in runs(plan, stage="search")} == {search}
    assert {(r["train_split"], r["eval_split"]) for r in runs(plan, stage="final")} == {final}
    assert {r["selection"] for r in runs(plan, stage="search")} == {"best"}


@pytest.mark.parametrize("benchmark", ["vtab-1k", "fgvc"])
def test_grids_per_benchmark(plans, benchmark):
    plan = [r for r in plans[benchmark] if r["task"] == plans[benchmark][0]["task"] and r["stage"] == "search"]

    def grid(method):
        points = [(r["lr"], r["weight_decay"]) for r in runs(plan, method=method)]
        return sorted({lr for lr, _ in points}), sorted({wd for _, wd in points}, reverse=True)

    assert grid("wegeft") == (GIFT_LRS, WDS)
    assert grid("lora") == (BASELINE_LRS[benchmark], WDS)
    assert grid("bitfit") == grid("vpt") == (BASELINE_LRS[benchmark], [0.0])


def test_lora_is_loralibs_default_scale_one_eighth(plans):
    for run in runs(plans["vtab-1k"], method="lora") + runs(plans["fgvc"], method="lora"):
        config = run["method_config"]
        assert (config["rank"], config["alpha"], config["targets"]) == (8, 1, ["attn.proj"])
    lora = config_from_yaml(load_preset("paper").methods["lora"].config)
    assert lora.scale == pytest.approx(1 / 8)


def test_wegeft_is_the_papers_vision_setting(plans):
    config = runs(plans["vtab-1k"], method="wegeft")[0]["method_config"]
    assert (config["rank"], config["targets"], config["shared"], config["variant"]) == (16, ["attn.proj"], True, "d_in")
    assert config["alpha"] in (None, 16)  # the authors' forward has no alpha / r factor: scale 1


def test_paper_text_differs_only_in_warmup_and_the_fgvc_final_split(tmp_path):
    plan = dry_run(tmp_path, "fgvc", "cub", "--config", "paper_text")
    assert {r["warmup_epochs"] for r in plan} == {5} and {r["batch_size"] for r in plan} == {32}
    assert {r["train_split"] for r in runs(plan, stage="final")} == {"train+val"}


def test_dry_run_needs_no_data_and_writes_nothing_else(tmp_path):
    out = tmp_path / "plan"
    args = ["protocol", "--benchmark", "vtab-1k", "--tasks", "cifar", "--methods", "lora", "--dry-run"]
    assert main([*args, "--out", str(out), "--data-root", str(tmp_path)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


def test_a_search_run_records_its_last_and_best_validation_epochs(tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, "shape", {"train800": 48, "val200": 16, "test": 24}, size=32)
    spec = smoke_final_spec(root, stage="search", stop_epoch=3, overrides={"model.warmup_epochs": 0})
    row = train_run(spec, tmp_path / "out")
    run_dir = spec.run_dir(tmp_path / "out")
    with (run_dir / "metrics.csv").open() as handle:
        val = [(float(r["val/acc"]) * 100, int(r["epoch"])) for r in csv.DictReader(handle) if r.get("val/acc")]
    assert [epoch for _, epoch in val] == [0, 1, 2]  # validated every epoch
    best = max(val, key=lambda v: (v[0], -v[1]))
    assert (row["best_top1"], row["best_epoch"]) == (pytest.approx(best[0], abs=1e-3), best[1])
    assert row["top1"] == pytest.approx(val[-1][0], abs=1e-3)  # the last epoch's
    groups = json.loads((run_dir / "result.json").read_text())["optimizer_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-4]  # smoke: decay on every tensor


def test_selection_by_best_or_last():
    preset = load_preset("paper")
    assert preset.selection == "best" and load_preset("smoke").selection == "last"


@pytest.mark.parametrize(
    ("method", "no_decay"),
    [
        ("bitfit.yaml", "every bias"),
        ("wegeft_r16.yaml", "the head's bias"),
        ("full.yaml", "norms and biases"),
        ("wegeft_paca.yaml", "the cluster map"),
    ],
)
def test_weight_decay_groups_exempt_1d_tensors_and_biases(method, no_decay):
    def module(exempt: bool) -> ClassificationModule:
        return ClassificationModule(
            num_classes=5,
            method=config_from_yaml(CONFIG_DIR / "method" / method),
            backbone="vit_base_patch16_224",
            pretrained=False,
            backbone_overrides=TINY_VIT,
            weight_decay=0.05,
            no_decay_1d_and_bias=exempt,
        )

    groups = {g["weight_decay"]: g["names"] for g in module(True).parameter_groups()}
    decayed, exempt = groups.get(0.05, []), groups.get(0.0, [])
    params = dict(module(True).network.named_parameters())
    cluster = ".attn.cluster."  # PaCa's assignment map: no decay in the authors' filter ("cluster" in the name)
    assert exempt and all(params[n].ndim <= 1 or n.endswith(".bias") or cluster in n for n in exempt)
    assert all(params[n].ndim > 1 and not n.endswith(".bias") and cluster not in n for n in decayed)
    assert "head.bias" in exempt and ("head.weight" in decayed)
    if no_decay == "norms and biases":
        assert any(".norm1.weight" in n for n in exempt)
    if no_decay == "the cluster map":
        assert any(n.endswith(".attn.cluster.weight") for n in exempt) and any(".attn.q.weight" in n for n in decayed)
    assert [g["weight_decay"] for g in module(False).parameter_groups()] == [0.05]  # one group, decay on every tensor


def test_preprocessing_is_the_authors_per_benchmark(plans):
    for run in plans["vtab-1k"]:  # tf_dataset.py: TF1 bilinear to 224 x 224 of the 0..255 values, no augmentation
        assert run["preprocessing"].startswith("authors_vtab:") and "bilinear-tf1" in run["preprocessing"]
        assert "TF1Resize(size=224)" in run["train_transform"] and run["train_transform"] == run["eval_transform"]
        assert "mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]" in run["eval_transform"]  # the backbone's, not ImageNet's
    for run in plans["fgvc"]:  # transforms.py: Resize(256) (PIL bilinear, shorter side), RandomCrop(224), flip 0.5
        assert run["preprocessing"].startswith("authors_fgvc:")
        train, evaluation = run["train_transform"], run["eval_transform"]
        assert "PILShorterResize(size=256)" in train and "RandomCrop(size=(224, 224)" in train
        assert "RandomHorizontalFlip(p=0.5)" in train
        assert "PILShorterResize(size=256)" in evaluation and "CenterCrop(size=(224, 224))" in evaluation
        assert "Random" not in evaluation
