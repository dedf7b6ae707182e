"""Method configs to and from dicts and the YAML presets under configs/method/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import clone

from wegeft_vision.methods import (
    METHODS,
    LoRAConfig,
    WeGeFTConfig,
    config_from_dict,
    config_from_spec,
    config_from_yaml,
    count_trainable,
    inject,
)

PRESETS = sorted((Path(__file__).parents[1] / "configs" / "method").glob("*.yaml"))


def test_every_method_has_a_preset():
    assert {config_from_yaml(p).method for p in PRESETS} == set(METHODS)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_inject(path, tiny_vit):
    config = config_from_yaml(path)
    assert config_from_dict(config.to_dict()) == config
    if config.method == "peft" and importlib.util.find_spec("peft") is None:
        pytest.skip("the peft presets need the `peft` extra")
    model = inject(clone(tiny_vit), config)
    assert count_trainable(model, exclude_head=False) > 0


def test_paper_presets_are_the_defaults():
    directory = PRESETS[0].parent
    assert config_from_yaml(directory / "wegeft_r16.yaml") == WeGeFTConfig()
    assert config_from_yaml(directory / "lora_r8.yaml") == LoRAConfig()


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        config_from_dict({"method": "dora"})
    with pytest.raises(ValueError, match=r"wegeft: unknown option\(s\) \['rnak'\]"):
        config_from_dict({"method": "wegeft", "rnak": 4})
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_path: wegeft_vision.methods.DoRAConfig\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown class_path"):
        config_from_yaml(bad)
    bad.write_text("class_path: wegeft_vision.methods.WeGeFTConfig\ninit_args:\n  rank: -1\n")
    with pytest.raises(ValueError, match="bad.yaml: wegeft: rank must be a positive integer"):
        config_from_yaml(bad)
    bad.write_text("rank: 4\n")
    with pytest.raises(ValueError, match="bad.yaml needs a `class_path`"):
        config_from_yaml(bad)


def test_spec_accepts_both_forms():
    assert config_from_spec({"method": "lora", "rank": 4}) == LoRAConfig(rank=4)
    spec = {"class_path": "wegeft_vision.methods.LoRAConfig", "init_args": {"rank": 4}}
    assert config_from_spec(spec) == LoRAConfig(rank=4)
    with pytest.raises(ValueError, match="model.method: unknown class_path"):
        config_from_spec({"class_path": "x.DoRAConfig"}, "model.method")
    misspelt = {"class_path": "wegeft_vision.methods.LoRAConfig", "init_arg": {"rank": 64}}
    with pytest.raises(ValueError, match=r"model.method: unknown key\(s\) \['init_arg'\]; expected `class_path`"):
        config_from_spec(misspelt, "model.method")  # would otherwise train LoRA's defaults without a word
    with pytest.raises(ValueError, match="init_args should be a mapping, got 4"):
        config_from_spec({"class_path": "wegeft_vision.methods.LoRAConfig", "init_args": 4}, "model.method")
