"""Backbone creation: local weights files, the offline error, the recorded tag, data config and weights source, and
the shipped mini-ViT."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import TINY_VIT, fake_hub_cache, make_tiny_vit
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wegeft_vision.backbones import (
    backbone_tag,
    create_backbone,
    create_from_source,
    data_config,
    describe_source,
    mini_vit,
    weights_source,
)
from wegeft_vision.data.leaves import HELD_OUT_STREAM
from wegeft_vision.data.pretraining_source import pretraining_source
from wegeft_vision.files import sha256_of


def test_local_weights_file_is_loaded_and_head_replaced(tmp_path):
    source = make_tiny_vit(num_classes=10, seed=3)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone("vit_base_patch16_224.augreg_in21k", num_classes=4, weights=path, **TINY_VIT)
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.head.out_features == 4
    assert backbone_tag(model) == "vit_base_patch16_224.augreg_in21k"
    assert data_config(model)["mean"] == (0.5, 0.5, 0.5)


def test_torch_state_dict_file_is_loaded(tmp_path):
    source = make_tiny_vit(num_classes=4, seed=4)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("vit_base_patch16_224", num_classes=4, weights=path, **TINY_VIT)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .*nothere.safetensors does not exist"):
        create_backbone("vit_base_patch16_224", weights=tmp_path / "nothere.safetensors", **TINY_VIT)
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_vit(embed_dim=48).state_dict().items()}, str(wrong))
    with pytest.raises(ValueError, match="weights file .*wrong.safetensors does not fit vit_base_patch16_224"):
        create_backbone("vit_base_patch16_224", weights=wrong, **TINY_VIT)


def test_unreachable_hub_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither in the Hugging Face cache nor reachable.*weights=PATH"):
        # offline and an empty cache: this asks the (unreachable) hub nothing and must fail with a clear message
        create_backbone("vit_tiny_patch16_224.augreg_in21k", pretrained=True, img_size=32)


# --- where the weights came from, and building the very same backbone again -------------------------------------


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(t, theirs[k]) for k, t in a.state_dict().items() if not k.startswith("head."))


def test_random_source_rebuilds_the_same_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    model = create_backbone("vit_base_patch16_224", num_classes=3, init_seed=7, **TINY_VIT)
    assert torch.equal(torch.rand(1), before)  # the init drew from its own generator
    assert weights_source(model) == {"kind": "random", "seed": 7}
    again = create_from_source("vit_base_patch16_224", weights_source(model), num_classes=3, **TINY_VIT)
    assert _same_weights(model, again)
    other = create_backbone("vit_base_patch16_224", num_classes=3, init_seed=8, **TINY_VIT)
    assert not _same_weights(model, other)
    assert describe_source(weights_source(model)) == "random:seed7"


def test_file_source_records_the_sha256_and_refuses_a_changed_or_missing_file(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_vit(seed=5).state_dict().items()}, str(path))
    model = create_backbone("vit_base_patch16_224", num_classes=3, weights=path, **TINY_VIT)
    source = weights_source(model)
    assert source == {"kind": "file", "path": str(path.resolve()), "sha256": sha256_of(path)}
    assert _same_weights(model, create_from_source("vit_base_patch16_224", source, num_classes=3, **TINY_VIT))
    save_file({k: v.contiguous() for k, v in make_tiny_vit(seed=6).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"vit.safetensors have sha256 .* not the recorded"):
        create_from_source("vit_base_patch16_224", source, num_classes=3, **TINY_VIT)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"vit.safetensors \(recorded with sha256 .*\) is gone"):
        create_from_source("vit_base_patch16_224", source, num_classes=3, **TINY_VIT)


def test_hub_source_is_rebuilt_from_the_hub_path(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    shape = dict(img_size=32, patch_size=8, depth=1)
    weights = timm.create_model("vit_tiny_patch16_224", num_classes=0, **shape).state_dict()
    fake_hub_cache(tmp_path, "timm/vit_tiny_patch16_224.augreg_in21k", {k: v.contiguous() for k, v in weights.items()})
    model = create_backbone("vit_tiny_patch16_224.augreg_in21k", num_classes=3, pretrained=True, **shape)
    source = weights_source(model)
    assert source["kind"] == "hub" and source["hf_hub_id"] == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert torch.equal(model.blocks[0].attn.proj.weight, weights["blocks.0.attn.proj.weight"])
    again = create_from_source("vit_tiny_patch16_224.augreg_in21k", source, num_classes=3, **shape)
    assert _same_weights(model, again)


def test_unknown_source_kind_is_refused():
    with pytest.raises(
        ValueError, match="unknown backbone weights source .*expected kind hub, shipped, file or random"
    ):
        create_from_source("vit_base_patch16_224", {"kind": "ftp"}, **TINY_VIT)


# --- the shipped mini-ViT ---------------------------------------------------------------------------------------


def test_shipped_weights_load_offline_with_their_data_config(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: no hub copy
    model = create_backbone(mini_vit.NAME, num_classes=10, pretrained=True)
    assert backbone_tag(model) == "vit_mini_patch8_32.procedural"
    assert weights_source(model) == {
        "kind": "shipped",
        "file": mini_vit.WEIGHTS_FILE.name,
        "sha256": sha256_of(mini_vit.WEIGHTS_FILE),
    }
    config = data_config(model)
    assert config["input_size"] == (3, 32, 32) and config["interpolation"] == "bicubic"
    assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    assert [name for name, _ in model.named_modules() if name.endswith("attn.proj")] == [
        f"blocks.{i}.attn.proj" for i in range(6)
    ]  # ViT-B/16's names: every method and the heatmaps apply unchanged
    file = load_file(str(mini_vit.WEIGHTS_FILE))
    assert all(t.dtype == torch.float16 for t in file.values())
    assert torch.equal(model.blocks[5].mlp.fc2.weight, file["blocks.5.mlp.fc2.weight"].float())
    assert mini_vit.WEIGHTS_FILE.stat().st_size <= 8 * 2**20
    again = create_from_source(mini_vit.NAME, weights_source(model), num_classes=10)
    assert _same_weights(model, again)
    with pytest.raises(ValueError, match="have sha256 .* not the recorded"):
        create_from_source(mini_vit.NAME, {**weights_source(model), "sha256": "0" * 64}, num_classes=10)


def test_shipped_weights_classify_held_out_samples_of_their_source_task():
    model = create_backbone(mini_vit.NAME, num_classes=mini_vit.SOURCE_CLASSES, pretrained=True).eval()
    metadata = safe_open(str(mini_vit.WEIGHTS_FILE), "pt").metadata()
    recorded = json.loads(metadata["held_out_top1_fp16"])
    assert json.loads(metadata["source_task"]).startswith("mixed (200 leaves classes")
    source = pretraining_source("mixed", classes=200, seed=0, size=32)
    assert source.num_classes == mini_vit.SOURCE_CLASSES
    images, labels = source.batch(range(800), HELD_OUT_STREAM)  # the script's held-out stream, 2-4 per class
    with torch.no_grad():
        predictions = model((images.float() / 255 - 0.5) / 0.5).argmax(1)
    accuracy = 100.0 * (predictions == labels).float().mean().item()
    assert accuracy > 50.0  # chance is 0.3%
    assert abs(accuracy - recorded) < 5.0  # what the pretraining script measured on 5,000 held-out samples


def test_retired_glyphs_tag_names_its_successor():
    with pytest.raises(
        ValueError, match=r"'vit_mini_patch8_32.glyphs' is no longer shipped.*use vit_mini_patch8_32.procedural"
    ):
        create_backbone("vit_mini_patch8_32.glyphs", num_classes=10, pretrained=True)
