"""The named method variants, defined once: distinct names and labels, configs that round-trip, the parameter table,
and the benchmark script running exactly them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from conftest import make_tiny_vit

from wegeft_vision.methods import (
    VARIANTS,
    LoRAConfig,
    Variant,
    WeGeFTConfig,
    config_from_dict,
    count_trainable,
    inject,
    method_config,
    parameter_table,
    variants,
)
from wegeft_vision.methods.peft_compat import peft_available


def test_names_and_labels_are_distinct_and_configs_round_trip():
    every = variants()
    assert len({v.name for v in every}) == len({v.label for v in every}) == len(every)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", v.name) for v in every)
    for variant in every:
        config = variant.config()
        assert isinstance(config, variant.cls) and config_from_dict(config.to_dict()) == config
        assert variant.config() is not config  # a new config each time: callers may change theirs
    assert [v.name for v in every[: len(VARIANTS)]] == [v.name for v in VARIANTS]
    assert len(every) > len(VARIANTS) if peft_available() else len(every) == len(VARIANTS)


def test_parameter_table_counts_each_variant_on_a_copy():
    backbone = make_tiny_vit()
    chosen = [v for v in VARIANTS if v.name in ("wegeft", "wegeft-sep", "lora", "full")]
    rows = parameter_table(backbone, chosen)
    assert method_config(backbone) is None  # the backbone itself is left as it was
    assert [r["variant"] for r in rows] == ["wegeft", "wegeft-sep", "lora", "full"]
    by_name = {r["variant"]: r for r in rows}
    assert by_name["wegeft"]["trainable"] == count_trainable(inject(make_tiny_vit(), WeGeFTConfig()))
    assert by_name["wegeft-sep"]["trainable"] == 3 * by_name["wegeft"]["trainable"]  # 3 blocks, a pair each
    assert by_name["lora"]["config"] == LoRAConfig().to_dict() and by_name["lora"]["method"] == "LoRA"
    assert by_name["full"]["percent_of_backbone"] == 100.0


def test_a_variant_that_does_not_fit_the_backbone_gets_its_reason_and_the_table_goes_on():
    too_wide = Variant("lora-r64", "LoRA r64", LoRAConfig, {"rank": 64})  # the tiny ViT is 32 wide
    chosen = [v for v in VARIANTS if v.name == "wegeft"] + [too_wide] + [v for v in VARIANTS if v.name == "lora"]
    rows = parameter_table(make_tiny_vit(), chosen)
    assert [r["variant"] for r in rows] == ["wegeft", "lora-r64", "lora"]
    assert rows[1]["trainable"] is rows[1]["millions"] is rows[1]["percent_of_backbone"] is None
    assert "rank must be at most 32, the width of blocks.0.attn.proj" in rows[1]["error"]
    assert rows[2]["trainable"] > 0 and "error" not in rows[0] and "error" not in rows[2]


def test_the_benchmark_runs_the_catalogue():
    path = Path(__file__).parents[1] / "scripts" / "bench_methods.py"
    spec = importlib.util.spec_from_file_location("bench_methods", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {v.name: v.config() for v in variants()}.items() <= bench.VARIANTS.items()
    assert set(bench.VARIANTS) - {v.name for v in variants()} == {"frozen", "wegeft-factored", "wegeft-naive-weight"}
