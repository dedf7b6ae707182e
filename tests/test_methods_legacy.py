"""Files of earlier versions load as they were: adapter files of format 1 (WeGeFT's `generator`, `g`), method presets
and dicts with the former option names, and the former class name `PeftConfig`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_vit, randomize_trainable
from safetensors.torch import load_file, save_file

from wegeft_vision.methods import (
    GenFTConfig,
    HFPeftConfig,
    WeGeFTConfig,
    config_from_dict,
    config_from_yaml,
    inject,
    load_adapter,
    method_config,
    save_adapter,
    trainable_parameters,
)

# the option names of format 1 (and of presets written before the rename), as that code wrote them
V1_OPTIONS = {
    "g_theta": "generator",
    "g_theta_per_layer": "generator_per_layer",
    "g_theta_norm": "generator_norm",
    "g_theta_ratio": "generator_ratio",
    "g_theta_heads": "generator_heads",
}
CONFIGS = {
    "identity": WeGeFTConfig(rank=4),
    "shared mlp": WeGeFTConfig(rank=4, g_theta="mlp"),
    "sep paca": WeGeFTConfig(rank=4, g_theta="paca", shared=False, num_clusters=4),
    "mlp per layer on q, v and proj": WeGeFTConfig(
        rank=4, g_theta="mlp", g_theta_per_layer=True, targets=("attn.qkv[q,v]", "attn.proj")
    ),
    "d_out transformer per layer": WeGeFTConfig(rank=4, g_theta="transformer", variant="d_out", g_theta_per_layer=True),
    "genft (its own `generator`)": GenFTConfig(),
}


def v1_name(name: str, config) -> str:
    """The name format 1 gave a tensor: WeGeFT's (phi, psi) holder was `generator`, holding a shared g_theta as `g`;
    a layer's own g_theta was its `g`."""
    if config.method != "wegeft":
        return name
    per_layer = config.g_theta_per_layer and config.shared
    name = name.replace(".projections.", ".generator.")
    return name.replace(".g_theta.", ".g." if per_layer else ".generator.g.")


def write_v1(model, path):
    """`model`'s adapter as format 1 wrote it: the sidecar's version, option names and tensor names of then."""
    save_adapter(model, path)
    config = method_config(model)
    tensors = {v1_name(n, config): t for n, t in load_file(path).items()}
    save_file(tensors, str(path))
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["format_version"] = 1
    meta["config"] = {V1_OPTIONS.get(k, k): v for k, v in meta["config"].items()}
    meta["tensors"] = sorted(tensors)
    side.write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS)
def test_format_1_adapters_load_to_the_same_model(config, tmp_path, images):
    trained = inject(make_tiny_vit(), config).eval()
    randomize_trainable(trained, std=0.1)
    meta = write_v1(trained, tmp_path / "old.safetensors")
    if config.method == "wegeft":
        assert "generator" in meta["config"] and "g_theta" not in meta["config"]
        assert all(".projections." not in n and ".g_theta." not in n for n in meta["tensors"])
    loaded = load_adapter(make_tiny_vit(), tmp_path / "old.safetensors").eval()
    assert method_config(loaded) == config
    assert set(trainable_parameters(loaded)) == set(trainable_parameters(trained))
    torch.testing.assert_close(loaded(images), trained(images), rtol=0, atol=0)


def test_format_1_names_are_those_the_old_code_wrote():
    """Recorded from the code before the rename (a shared MLP g_theta; one per layer on q, v slices and proj)."""
    shared = CONFIGS["shared mlp"]
    names = {v1_name(n, shared) for n in trainable_parameters(inject(make_tiny_vit(), shared))}
    proj = "blocks.0.attn.proj.generator."
    mlp = {f"{proj}g.mlp.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")}
    assert names == {f"{proj}phi", f"{proj}psi", *mlp, "head.weight", "head.bias"}
    per_layer = CONFIGS["mlp per layer on q, v and proj"]
    names = {v1_name(n, per_layer) for n in trainable_parameters(inject(make_tiny_vit(), per_layer))}
    assert {"blocks.0.attn.qkv.slices.q.generator.phi", "blocks.0.attn.qkv.slices.q.generator.psi"} < names
    assert {"blocks.2.attn.qkv.slices.v.g.mlp.2.bias", "blocks.1.attn.proj.g.mlp.0.weight"} < names
    assert len(names) == 2 + 9 * 4 + 2  # one pair, nine MLPs of four tensors, the head


def test_format_2_files_keep_their_names(tmp_path):
    """Only format 1 is renamed: a current file holding former names is refused, naming them."""
    model = inject(make_tiny_vit(), CONFIGS["shared mlp"])
    write_v1(model, tmp_path / "a.safetensors")
    side = tmp_path / "a.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "format_version": 2}))
    with pytest.raises(ValueError, match=r"does not fit the model: missing .*projections.*unexpected .*generator"):
        load_adapter(make_tiny_vit(), tmp_path / "a.safetensors")


def test_former_option_names_in_presets_and_dicts(tmp_path):
    old = tmp_path / "wegeft_mlp_old.yaml"
    old.write_text(
        "class_path: wegeft_vision.methods.WeGeFTConfig\n"
        "init_args:\n  rank: 8\n  generator: mlp\n  generator_per_layer: true\n  generator_norm: ln\n"
        "  generator_ratio: 1.0\n  generator_heads: 2\n"
    )
    assert config_from_yaml(old) == WeGeFTConfig(
        rank=8, g_theta="mlp", g_theta_per_layer=True, g_theta_norm="ln", g_theta_ratio=1.0, g_theta_heads=2
    )
    assert config_from_dict({"method": "wegeft", "generator": "relu"}) == WeGeFTConfig(g_theta="relu")
    with pytest.raises(ValueError, match="'generator' and 'g_theta' are one option"):
        config_from_dict({"method": "wegeft", "generator": "relu", "g_theta": "gelu"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['generatr'\]"):
        config_from_dict({"method": "wegeft", "generatr": "relu"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['generator'\]"):  # the rename is WeGeFT's only
        config_from_dict({"method": "lora", "generator": "relu"})


def test_former_class_name_of_the_peft_method(tmp_path):
    old = tmp_path / "peft_dora_old.yaml"
    old.write_text("class_path: wegeft_vision.methods.PeftConfig\ninit_args:\n  kind: dora\n")
    assert config_from_yaml(old) == HFPeftConfig(kind="dora")
