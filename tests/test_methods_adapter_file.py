"""Adapter files: round trip onto a fresh backbone for every method, contents, and refusals."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import TINY_VIT, clone, fake_hub_cache, make_tiny_vit, randomize_trainable
from safetensors.torch import load_file, save_file

from wegeft_vision.backbones import create_backbone, mini_vit, weights_source
from wegeft_vision.methods import (
    BitFitConfig,
    FullFinetuneConfig,
    LinearProbeConfig,
    LoRAConfig,
    VPTConfig,
    WeGeFTConfig,
    inject,
    load_adapted_model,
    load_adapter,
    method_config,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
)

CONFIGS = [
    WeGeFTConfig(rank=4),
    WeGeFTConfig(rank=4, variant="d_out", shared=False, targets=("attn.proj", "mlp.fc1")),
    LoRAConfig(rank=2),
    BitFitConfig(),
    VPTConfig(num_prompts=3),
    LinearProbeConfig(),
    FullFinetuneConfig(),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.method)
def test_round_trip_onto_fresh_backbone_reproduces_logits(tmp_path, images, config):
    trained = inject(make_tiny_vit(num_classes=7, seed=0), config).eval()
    randomize_trainable(trained)
    path = save_adapter(trained, tmp_path / "adapter.safetensors", extra={"seed": 3})
    fresh = make_tiny_vit(num_classes=7, seed=0).eval()  # the same "pretrained" weights...
    fresh.reset_classifier(1000)  # ...with another head size, as a hub model would come
    load_adapter(fresh, path)
    assert fresh.num_classes == 7 and method_config(fresh) == config
    torch.testing.assert_close(fresh(images), trained(images), rtol=0, atol=0)


def test_file_holds_only_trainable_tensors_and_sidecar_describes_them(tmp_path, tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4))
    path = save_adapter(model, tmp_path / "a.safetensors")
    tensors = load_file(path)
    assert set(tensors) == {
        "blocks.0.attn.proj.projections.phi",
        "blocks.0.attn.proj.projections.psi",
        "head.weight",
        "head.bias",
    }
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["config"] == {**WeGeFTConfig(rank=4).to_dict(), "targets": ["attn.proj"]}
    assert meta["backbone"] == {
        "architecture": "vit_base_patch16_224",
        "tag": "augreg2_in21k_ft_in1k",
        "weights": None,  # built by timm directly: where its weights came from is not known
        "num_classes": 5,
        "overrides": {},
    }
    assert meta["tensors"] == sorted(tensors)
    assert read_adapter_meta(path)["format"] == "wegeft-vision-adapter"


def test_load_onto_model_injected_with_same_config(tmp_path, tiny_vit, images):
    model = inject(clone(tiny_vit), LoRAConfig(rank=2))
    randomize_trainable(model)
    path = save_adapter(model, tmp_path / "a.safetensors")
    target = inject(clone(tiny_vit), LoRAConfig(rank=2))
    load_adapter(target, path)
    torch.testing.assert_close(target(images), model(images), rtol=0, atol=0)


def test_refusals_name_the_file(tmp_path, tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4))
    path = save_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(FileNotFoundError, match="adapter file .*missing.safetensors does not exist"):
        load_adapter(clone(tiny_vit), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"should end in \.safetensors"):
        save_adapter(model, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="carries no method"):
        save_adapter(clone(tiny_vit), tmp_path / "b.safetensors")

    other = inject(clone(tiny_vit), LoRAConfig())
    with pytest.raises(ValueError, match="the model carries LoRAConfig"):
        load_adapter(other, path)

    bigger = make_tiny_vit(embed_dim=48)
    with pytest.raises(ValueError, match="projections.phi has shape"):
        load_adapter(bigger, path)

    vit_small = make_tiny_vit()
    vit_small.pretrained_cfg = {**vit_small.pretrained_cfg, "architecture": "vit_small_patch16_224"}
    with pytest.raises(ValueError, match="trained on 'vit_base_patch16_224', not on this 'vit_small_patch16_224'"):
        load_adapter(vit_small, path)

    tensors = load_file(path)
    del tensors["head.bias"]
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
        load_adapter(clone(tiny_vit), path)

    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(clone(tiny_vit), path)

    (tmp_path / "a.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar .*a.json does not exist"):
        load_adapter(clone(tiny_vit), path)


def test_trainable_parameters_lists_shared_tensors_once(tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4, targets=("attn.proj", "mlp.fc2")))
    # proj (32x32) and fc2 (32x64) differ in shape: two pairs, each listed once under its first layer's name
    names = sorted(n for n in trainable_parameters(model, exclude_head=True))
    assert names == [
        "blocks.0.attn.proj.projections.phi",
        "blocks.0.attn.proj.projections.psi",
        "blocks.0.mlp.fc2.projections.phi",
        "blocks.0.mlp.fc2.projections.psi",
    ]


@pytest.mark.parametrize("kind", ["random", "file", "shipped", "hub"])
def test_sidecar_records_the_weights_source_and_loading_rebuilds_it_offline(kind, tmp_path, monkeypatch, images):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    name, options = "vit_base_patch16_224", dict(TINY_VIT)
    if kind == "random":
        backbone = create_backbone(name, num_classes=3, init_seed=11, **options)
    elif kind == "file":
        weights = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in make_tiny_vit(seed=9).state_dict().items()}, str(weights))
        backbone = create_backbone(name, num_classes=3, weights=weights, **options)
    elif kind == "shipped":
        name, options = mini_vit.NAME, {}
        backbone = create_backbone(name, num_classes=3, pretrained=True)
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    else:
        name, options = "vit_tiny_patch16_224.augreg_in21k", dict(img_size=32, patch_size=8, depth=1)
        fake_hub_cache(
            tmp_path / "cache", f"timm/{name}", timm.create_model(name, num_classes=0, **options).state_dict()
        )
        backbone = create_backbone(name, num_classes=3, pretrained=True, **options)
    model = inject(backbone, WeGeFTConfig(rank=4)).eval()
    randomize_trainable(model)
    path = save_adapter(model, tmp_path / "a.safetensors", backbone_overrides=options)
    recorded = read_adapter_meta(path)["backbone"]["weights"]
    assert recorded == weights_source(backbone) and recorded["kind"] == kind
    loaded = load_adapted_model(path)  # only the hub kind reads the (offline) Hugging Face cache
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    if kind == "file":
        weights.write_bytes(b"changed")
        with pytest.raises(ValueError, match=r"adapter .*a.safetensors: backbone weights .*w.safetensors have sha256"):
            load_adapted_model(path)
