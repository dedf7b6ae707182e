"""Shared LoRA, GenFT, FacT (and peft's DoRA) train in the smoke protocol (`smoke_methods`, one grid point each)."""

from __future__ import annotations

import csv
import math

from wegeft_vision.cli import main
from wegeft_vision.methods.peft_compat import peft_available

METHODS = ["lora_shared", "genft_qv", "genft_proj", "fact_tt", "fact_tk"] + (["peft:dora"] if peft_available() else [])


def test_compared_methods_train_in_the_smoke_protocol(tmp_path):
    out = tmp_path / "run"
    args = ["protocol", "--config", "smoke_methods", "--methods", *METHODS, "--tasks", "vtab-1k/synthetic_shape"]
    assert main([*args, "--no-progress", "--poll", "0.5", "--out", str(out)]) == 0
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    finals = {r["method"]: r for r in rows if r["stage"] == "final"}
    assert sorted(finals) == sorted(METHODS)
    for method, row in finals.items():
        assert row["state"] == "finished", (method, row)
        assert math.isfinite(float(row["top1"])), (method, row)
