"""Shared LoRA: one (B, A) pair per weight shape for all targeted layers (the weight-unaware control)."""

from __future__ import annotations

from conftest import clone
from method_contract import check_contract

from wegeft_vision.methods import LoRALinear, SharedLoRAConfig, config_from_dict, inject, trainable_parameters


def test_shared_lora_contract(tmp_path):
    config = SharedLoRAConfig(rank=3, alpha=6.0, targets=("attn.proj", "mlp.fc1"))

    def reference(model):
        proj, fc1 = model.blocks[0].attn.proj, model.blocks[0].mlp.fc1
        out = {}
        for i, block in enumerate(model.blocks):
            assert block.attn.proj.lora_A is proj.lora_A and block.mlp.fc1.lora_B is fc1.lora_B
            out[f"blocks.{i}.attn.proj"] = 2.0 * proj.lora_B @ proj.lora_A
            out[f"blocks.{i}.mlp.fc1"] = 2.0 * fc1.lora_B @ fc1.lora_A
        return out

    check_contract(config, tmp_path, 3 * (32 + 32) + 3 * (32 + 64), reference)


def test_shared_lora_lists_each_tensor_once_and_round_trips_its_config(tiny_vit):
    config = SharedLoRAConfig()
    model = inject(clone(tiny_vit), config)
    assert isinstance(model.blocks[2].attn.proj, LoRALinear)
    assert set(trainable_parameters(model, exclude_head=True)) == {
        "blocks.0.attn.proj.lora_A",
        "blocks.0.attn.proj.lora_B",
    }
    assert config.rank == 16 and config_from_dict(config.to_dict()) == config
