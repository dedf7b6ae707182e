"""Faults in a protocol's method presets: every family's bad option is refused before anything is pinned, with exit 2
and one line naming the method label, its preset file, the option and its value; the corrected preset then runs in
the same `--out` (nothing was pinned that would call it "not comparable")."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from torch import nn

from wegeft_vision.cli import main
from wegeft_vision.methods import LinearProbeConfig
from wegeft_vision.methods.peft_compat import peft_available
from wegeft_vision.protocol.launch import Request, prepare
from wegeft_vision.protocol.preset import CONFIG_DIR as CONFIGS
from wegeft_vision.protocol.preset import load_preset
from wegeft_vision.training import run_config
from wegeft_vision.training.run_config import RunConfig

SMOKE = CONFIGS / "protocol" / "smoke.yaml"  # its backbone: 2 blocks of width 32, mlp 32 -> 128 -> 32
FAMILY = {
    "wegeft": "WeGeFTConfig",
    "lora": "LoRAConfig",
    "lora_shared": "SharedLoRAConfig",
    "fact_tt": "FacTTTConfig",
    "fact_tk": "FacTTKConfig",
    "genft": "GenFTConfig",
    "vpt": "VPTConfig",
    "bitfit": "BitFitConfig",
    "linear": "LinearProbeConfig",
    "full": "FullFinetuneConfig",
    "peft": "HFPeftConfig",
}
SMOKE_BACKBONE = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
NAN, INF = float("nan"), float("inf")

# (family, init_args, what the line says after "method LABEL (FILE): ")
CASES = [
    ("wegeft", {"g_theta": "swishy"}, "unknown g_theta 'swishy'"),
    ("wegeft", {"rank": 0}, "rank must be a positive integer, got 0"),
    ("wegeft", {"alpha": NAN}, "alpha must be a non-zero finite number or null, got nan"),
    ("wegeft", {"g_theta": "mlp", "g_theta_ratio": INF}, "g_theta_ratio must be a positive finite number, got inf"),
    ("wegeft", {"rank": 64}, "rank must be at most 32, the width of blocks.0.attn.proj (32 -> 32), got 64"),
    ("wegeft", {"variant": "d_out", "targets": ["mlp.fc1"], "rank": 48}, "the width of blocks.0.mlp.fc1 (32 -> 128)"),
    ("wegeft", {"shared": "no"}, "shared must be true or false, got 'no'"),
    ("wegeft", {"g_theta": "paca", "g_theta_heads": 3}, "rank must be divisible by g_theta_heads (16 by 3)"),
    ("lora", {"targets": ["attn.qkv[q,x]"]}, "target 'attn.qkv[q,x]': slices must be distinct names"),
    ("lora", {"targets": ["attn.qkv[q,v]"], "rank": 40}, "rank must be at most 32, the width of blocks.0.attn.qkv[q]"),
    ("lora", {"targets": ["attn.out"]}, "target 'attn.out' matches no module"),
    ("lora", {"alpha": 0}, "alpha must be a non-zero finite number or null, got 0"),
    ("lora", {"layers": []}, "layers must be a non-empty list of block indices (or null), got []"),
    ("lora", {"layers": [5]}, "layers [5] are not blocks of this model"),
    ("lora", {"dropout": "0.1"}, "dropout must be in [0, 1), got '0.1'"),
    ("lora_shared", {"rank": 33}, "rank must be at most 32"),
    ("fact_tt", {"rank": 64}, "rank must be at most 32, the width of blocks.0.attn.qkv (32 -> 96), got 64"),
    ("fact_tk", {"scale": NAN}, "scale must be a non-zero finite number, got nan"),
    ("genft", {"outer": "swish"}, "unknown outer activation 'swish'"),
    ("genft", {"targets": ["mlp.fc1"]}, "blocks.0.mlp.fc1 has a 128x32 weight; GenFT here needs square weights"),
    ("genft", {"ratio": INF}, "ratio must be a non-zero finite number, got inf"),
    ("vpt", {"num_prompts": 0}, "num_prompts must be a positive integer, got 0"),
    ("vpt", {"dropout": NAN}, "dropout must be in [0, 1), got nan"),
    ("vpt", {"layers": [9]}, "layers [9] are not blocks of this model (it has blocks 0..1)"),
    ("bitfit", {"include_patch_embed": "yes"}, "include_patch_embed must be true or false, got 'yes'"),
    ("linear", {"rank": 8}, "unknown option(s) ['rank']"),
    ("full", {"lr": 1}, "unknown option(s) ['lr']"),
]
PEFT_CASES = [
    ("peft", {"kind": "nonesuch"}, "unknown kind 'nonesuch'"),
    ("peft", {"kind": "lora", "options": {"r": 64}}, "options.r must be at most 32, the width of blocks.0.attn.proj"),
    ("peft", {"kind": "lora", "options": {"lora_alpha": NAN}}, "options.lora_alpha must be a finite number, got nan"),
    ("peft", {"kind": "vblora"}, "`in_features` 32 must be divisible by `vector_length` 256"),
    ("peft", {"kind": "lora", "options": {"rr": 4}}, "does not take options"),
]
FILES = [
    ("unknown class", {"class_path": "wegeft_vision.methods.NopeConfig"}, "unknown class_path"),
    ("misspelt init_args", {"class_path": "wegeft_vision.methods.LoRAConfig", "init_arg": {"rank": 4}}, "init_arg"),
    ("empty file", None, "expected a mapping with `class_path` and `init_args`, got None"),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The smoke preset's synthetic tasks, written once (with --data-root, OUT itself stays untouched)."""
    return tmp_path_factory.mktemp("data")


def write_preset(folder: Path, method: object, benchmarks: dict | None = None) -> tuple[Path, Path]:
    """A protocol preset on the smoke recipe with one method, `mine`, whose preset file holds `method`."""
    folder.mkdir(parents=True, exist_ok=True)
    method_file = folder / "mine.yaml"
    method_file.write_text(yaml.safe_dump(method))
    preset = {
        "name": "faulty",
        "base": str(SMOKE),
        "methods": {"mine": {"config": method_file.name, "lr": [1.0e-2], "weight_decay": [0.0]}},
    }
    if benchmarks:
        preset["benchmarks"] = benchmarks
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path, method_file


def protocol(preset: Path, out: Path, data_root: Path, *extra: str) -> list[str]:
    command = ["protocol", "--config", str(preset), "--out", str(out), "--data-root", str(data_root)]
    return [*command, "--no-progress", "--poll", "0.2", *extra]


def assert_refused(capsys, out: Path, method_file: Path, expected: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wegeft-vision protocol: error: method mine ({method_file}): "), lines[0]
    assert expected in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())  # no protocol.json, no optuna.db, no results.csv


def spec(family: str, init_args: dict) -> dict:
    return {"class_path": f"wegeft_vision.methods.{FAMILY[family]}", "init_args": init_args}


@pytest.mark.parametrize(
    ("family", "init_args", "expected"),
    [
        pytest.param(
            family,
            init_args,
            expected,
            id=f"{family}:{','.join(init_args)}:{number}",
            marks=[pytest.mark.skipif(not peft_available(), reason="the peft extra")] if family == "peft" else [],
        )
        for number, (family, init_args, expected) in enumerate(CASES + PEFT_CASES)
    ],
)
def test_a_bad_method_option_is_refused_before_anything_is_pinned(
    family, init_args, expected, data_root, tmp_path, capsys
):
    preset, method_file = write_preset(tmp_path / "presets", spec(family, init_args))
    out = tmp_path / "out"
    assert main(protocol(preset, out, data_root, "--tasks", "vtab-1k/synthetic_shape")) == 2
    assert_refused(capsys, out, method_file, expected)


@pytest.mark.parametrize(("method", "expected"), [case[1:] for case in FILES], ids=[case[0] for case in FILES])
def test_a_method_file_that_is_not_a_method_is_refused(method, expected, data_root, tmp_path, capsys):
    preset, method_file = write_preset(tmp_path / "presets", method)
    out = tmp_path / "out"
    assert main(protocol(preset, out, data_root, "--tasks", "vtab-1k/synthetic_shape")) == 2
    assert_refused(capsys, out, method_file, expected)


def test_a_method_is_checked_on_the_backbone_of_each_benchmark(data_root, tmp_path, capsys):
    """The FGVC tasks of this preset run a narrower backbone (a per-benchmark override): rank 24 fits the VTAB-1k
    backbone (width 32) and not the FGVC one (width 16); the refusal names the narrow layer."""
    narrow = {**SMOKE_BACKBONE, "embed_dim": 16}
    benchmarks = {"fgvc": {"overrides": {"model.backbone_overrides": narrow}}}
    preset, method_file = write_preset(tmp_path / "presets", spec("wegeft", {"rank": 24}), benchmarks)
    out = tmp_path / "out"
    tasks = ["--tasks", "vtab-1k/synthetic_shape", "fgvc/synthetic_colour"]
    assert main(protocol(preset, out, data_root, *tasks)) == 2
    assert_refused(capsys, out, method_file, "rank must be at most 16, the width of blocks.0.attn.proj (16 -> 16)")
    vtab_alone = Request(preset=preset, out=out, tasks=tasks[1:2], data_root=data_root)
    assert [unit.task.ref for unit in prepare(vtab_alone).units] == ["vtab-1k/synthetic_shape"]
    assert not out.exists()


def test_after_fixing_the_preset_the_same_out_runs(data_root, tmp_path, capsys):
    preset, method_file = write_preset(tmp_path / "presets", spec("wegeft", {"rank": 16, "alpha": NAN}))
    out = tmp_path / "out"
    command = protocol(preset, out, data_root, "--tasks", "vtab-1k/synthetic_shape")
    assert main(command) == 2
    assert_refused(capsys, out, method_file, "alpha must be a non-zero finite number or null, got nan")
    method_file.write_text(yaml.safe_dump(spec("wegeft", {"rank": 16, "alpha": 16})))
    assert main(command) == 0
    assert (out / "protocol.json").is_file() and (out / "results.csv").is_file()
    assert "not comparable" not in capsys.readouterr().err


def test_each_backbone_and_method_is_built_once_and_vit_b_in_well_under_a_second(data_root, monkeypatch):
    """19 tasks x 4 methods must not build 76 models: the check is cached per (backbone, overrides, method)."""
    builds = []
    build = run_config._build_method
    monkeypatch.setattr(run_config, "_build_method", lambda *args: builds.append(args) or build(*args))
    monkeypatch.setattr(run_config, "_BUILT", set())
    method = CONFIGS / "method" / "wegeft_r16.yaml"
    for seed in (0, 1, 2):
        config = RunConfig(
            recipe=CONFIGS / "fit" / "smoke.yaml",
            method=method,
            data={"dataset": "vtab-1k/cifar", "root": str(data_root)},
            stage="search",
            lr=1e-3,
            weight_decay=0.0,
            seed=seed,
            overrides={"model.backbone": "vit_base_patch16_224", "model.backbone_overrides": None},
        )
        started = time.perf_counter()
        config.check_method("wegeft")
        elapsed = time.perf_counter() - started
        if seed == 0:
            assert elapsed < 5.0  # about 0.1 s on a laptop core; generous for a shared CI machine
    assert len(builds) == 1 and builds[0][0] == "vit_base_patch16_224"


@pytest.mark.parametrize("path", sorted((CONFIGS / "protocol").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_bundled_preset_passes_the_check_on_its_backbones(path):
    """What the check refuses is never something a bundled preset asks for (on each benchmark's backbone)."""
    preset = load_preset(path)
    for benchmark, dataset in (("vtab-1k", "vtab-1k/cifar"), ("fgvc", "fgvc/cub")):
        applied = preset.for_benchmark(benchmark)
        for label, grid in applied.methods.items():
            RunConfig(
                recipe=applied.fit_config,
                method=grid.config,
                data={"dataset": dataset, "root": "DATA_ROOT"},
                stage="search",
                lr=grid.lr[0],
                weight_decay=grid.weight_decay[0],
                seed=0,
                overrides={**applied.overrides, **grid.overrides},
            ).check_method(label)


@dataclasses.dataclass
class _ReadsWeights(LinearProbeConfig):
    """A method that reads the weights while it builds (as peft's SVD-initialised kinds do): no meta tensors."""

    built_on: ClassVar[list[str]] = []

    def apply(self, model: nn.Module) -> None:
        weight = model.blocks[0].attn.proj.weight
        self.built_on.append(weight.device.type)
        if weight.is_meta:
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        if not torch.isfinite(weight).all():
            raise ValueError("reads_weights: the weights are not finite")


def test_a_method_that_cannot_build_on_the_meta_device_is_built_on_real_tensors():
    run_config._build_method("vit_base_patch16_224", dict(SMOKE_BACKBONE), _ReadsWeights())
    assert _ReadsWeights.built_on == ["meta", "cpu"]


def test_an_override_inside_the_method_is_refused_rather_than_dropped(data_root, tmp_path, capsys):
    """`model.method.init_args.rank` would be replaced by the method's preset: it would change nothing but the
    fingerprint. The way to another rank is a method preset of one's own."""
    out = tmp_path / "out"
    command = ["protocol", "--config", "smoke", "--out", str(out), "--data-root", str(data_root)]
    assert main([*command, "--set", "model.method.init_args.rank=4"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        "wegeft-vision protocol: error: --set model.method.init_args.rank=4: every run sets model.method from the "
        "method's preset"
    )
    assert not out.exists()
