"""`scripts/pretrain_mini_vit.py`: deterministic by seed, fp16 safetensors with its record, loadable as a backbone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wegeft_vision.backbones import create_backbone, mini_vit, weights_source

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_mini_vit.py"
TINY_RUN = ["--steps", "3", "--batch-size", "8", "--held-out", "20", "--eval-every", "2", "--warmup-steps", "1"]


def pretrain(out: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *TINY_RUN, *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return result.stdout


def test_same_seed_same_weights_and_a_record_in_the_file(tmp_path):
    log = pretrain(tmp_path / "a.safetensors", "--json", str(tmp_path / "a.json"))
    pretrain(tmp_path / "b.safetensors")
    pretrain(tmp_path / "c.safetensors", "--seed", "1")
    a, b, c = (load_file(str(tmp_path / f"{x}.safetensors")) for x in "abc")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.proj.weight"], c["blocks.0.attn.proj.weight"])
    assert all(t.dtype == torch.float16 for t in a.values()) and a["head.weight"].shape == (
        mini_vit.SOURCE_CLASSES,
        192,
    )
    assert "step     2/3" in log and "held-out top-1 of the fp16 weights" in log
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as handle:
        record = {k: json.loads(v) for k, v in handle.metadata().items()}
    assert record["seed"] == 0 and record["steps"] == 3 and record["threads"] == 1
    assert record["source_task"].startswith("mixed (200 leaves classes, wegeft_vision.data.leaves")
    assert record["global_pool"] == "avg" and record["pixel_weight"] == 1.0
    assert not any(name.startswith("pixel") for name in a)  # the reconstruction decoder is not shipped
    assert record["data_config"]["input_size"] == list(mini_vit.DATA_CONFIG["input_size"])
    curve = json.loads((tmp_path / "a.json").read_text())["curve"]
    assert [point["step"] for point in curve] == [2, 3]


def test_the_written_file_loads_as_backbone_weights(tmp_path):
    pretrain(tmp_path / "w.safetensors")
    model = create_backbone(mini_vit.ARCHITECTURE, num_classes=4, weights=tmp_path / "w.safetensors")
    assert weights_source(model)["kind"] == "file" and model.head.out_features == 4


def test_earlier_glyph_source_still_trains(tmp_path):
    """`--source glyphs --global-pool token` reproduces the retired tag's recipe (the pretraining table's first row)."""
    log = pretrain(
        tmp_path / "g.safetensors",
        "--source",
        "glyphs",
        "--classes",
        "10",
        "--global-pool",
        "token",
        "--pixel-weight",
        "0",
    )
    assert "on 10 glyphs classes" in log
    with safe_open(str(tmp_path / "g.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["global_pool"]) == "token"
