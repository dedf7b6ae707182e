"""Backbone creation: local weights files, the offline error, the recorded tag and data config."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
from conftest import TINY_VIT, make_tiny_vit
from safetensors.torch import save_file

from wegeft_vision.backbones import backbone_tag, create_backbone, data_config


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
