"""`wegeft-vision params` reproduces the trainable-parameter figures of the paper's Table 6 (ViT-B/16)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wegeft_vision.cli import main


def test_params_reproduces_table_6(tmp_path, capsys):
    out_json = tmp_path / "params.json"
    assert main(["params", "--model", "vit_base_patch16_224", "--json", str(out_json)]) == 0
    lines = {line.split("  ")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    for method, count, millions in [
        ("WeGeFT", "24,576", "0.025M"),
        ("LoRA", "147,456", "0.147M"),
        ("VPT-deep", "46,080", "0.046M"),
        ("BitFit", "82,944", "0.083M"),
    ]:
        assert count in lines[method] and millions in lines[method], lines[method]
    rows = {row["method"]: row for row in json.loads(out_json.read_text())["rows"]}
    assert rows["WeGeFT"]["trainable"] == 24_576 and rows["Full fine-tuning"]["trainable"] == 85_798_656


def test_a_method_that_does_not_fit_marks_its_row_and_the_table_goes_on(tmp_path, capsys):
    """VB-LoRA's vector length (256) divides no layer of the 192-wide mini-ViT: that row says so, the others count."""
    pytest.importorskip("peft")
    out_json = tmp_path / "params.json"
    assert main(["params", "--model", "vit_mini_patch8_32", "--json", str(out_json)]) == 0
    lines = {line.split("  ")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert (
        "n/a: peft: vblora with options {}: `in_features` 192 must be divisible by `vector_length` 256"
        in lines["peft:vblora"]
    )
    assert "6,144" in lines["WeGeFT"] and "%" in lines["peft:ia3"]  # rows before and after it are counted
    rows = {row["method"]: row for row in json.loads(out_json.read_text())["rows"]}
    assert rows["peft:vblora"]["trainable"] is None and "vector_length" in rows["peft:vblora"]["error"]
    assert rows["WeGeFT"]["trainable"] == 6_144


def test_unknown_model_exits_non_zero_with_message(capsys):
    assert main(["params", "--model", "vit_nonexistent"]) == 2
    assert "unknown timm model 'vit_nonexistent'" in capsys.readouterr().err


def test_params_module_starts_without_torch():
    """`wegeft-vision params --help` builds the parser without importing torch, timm or the methods."""
    code = (
        "import argparse, sys\n"
        "from wegeft_vision.cli import params\n"
        "params.add_parser(argparse.ArgumentParser())\n"
        "print(sorted(m for m in ('torch', 'timm', 'wegeft_vision.methods') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_params_takes_a_family_at_its_real_size_on_the_meta_device(capsys):
    assert main(["params", "--model", "swin"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert "swin_base_patch4_window7_224 (family swin)" in out and "meta device, no weights" in out
    assert "61,440" in lines["WeGeFT"]  # one (phi, psi) per stage width: 2 * 16 * (128 + 256 + 512 + 1024)
    assert "n/a: vpt: SwinTransformer attends within windows" in lines["VPT-deep"]
