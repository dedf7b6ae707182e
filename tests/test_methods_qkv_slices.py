"""q/k/v-slice targets (`attn.qkv[q,v]`): ΔW only in those rows of the fused projection, for any weight method."""

from __future__ import annotations

import pytest
import torch
from conftest import clone, make_tiny_vit, randomize_trainable
from method_contract import check_contract

from wegeft_vision.methods import LoRAConfig, WeGeFTConfig, inject, merge, trainable_parameters, unmerge
from wegeft_vision.methods.base import SlicedLinear, parse_target

ROWS = {"q": slice(0, 32), "k": slice(32, 64), "v": slice(64, 96)}


def _lora_reference(model):
    out = {}
    for i, block in enumerate(model.blocks):
        delta = torch.zeros(96, 32, dtype=torch.float64)
        for part, layer in block.attn.qkv.slices.items():
            delta[ROWS[part]] = 2.0 / 4 * layer.lora_B @ layer.lora_A
        out[f"blocks.{i}.attn.qkv"] = delta
    return out


def test_lora_on_q_and_v_contract(tmp_path):
    config = LoRAConfig(rank=4, alpha=2.0, targets=("attn.qkv[q,v]",))
    model = check_contract(config, tmp_path, 3 * 2 * 4 * (32 + 32), _lora_reference)
    assert isinstance(model.blocks[0].attn.qkv, SlicedLinear)
    assert list(model.blocks[0].attn.qkv.slices) == ["q", "v"]


def test_wegeft_on_slices_and_proj_contract(tmp_path):
    config = WeGeFTConfig(rank=3, targets=("attn.qkv[q]", "attn.qkv[v]", "attn.proj"))

    def reference(model):
        proj = model.blocks[0].attn.proj.projections  # one (phi, psi) for all (32, 32) weights: q, v and proj
        out = {}
        for i, block in enumerate(model.blocks):
            slices = block.attn.qkv.slices
            assert slices["q"].projections is proj and slices["v"].projections is proj
            w = block.attn.qkv.base.weight
            delta = torch.zeros_like(w)
            for part in "qv":
                delta[ROWS[part]] = w[ROWS[part]] @ proj.phi @ proj.psi
            out[f"blocks.{i}.attn.qkv"] = delta
            out[f"blocks.{i}.attn.proj"] = block.attn.proj.base.weight @ proj.phi @ proj.psi
        return out

    check_contract(config, tmp_path, 2 * 3 * 32, reference)


def test_merge_touches_only_the_targeted_rows(tiny_vit64):
    model = inject(clone(tiny_vit64), LoRAConfig(rank=2, targets=("attn.qkv[k]",), layers=(1,)))
    assert set(trainable_parameters(model, exclude_head=True)) == {
        "blocks.1.attn.qkv.slices.k.lora_A",
        "blocks.1.attn.qkv.slices.k.lora_B",
    }
    randomize_trainable(model)
    fused = model.blocks[1].attn.qkv
    before = fused.base.weight.detach().clone()
    bias = fused.base.bias.detach().clone()
    merge(model)
    after = fused.base.weight
    assert torch.equal(after[ROWS["q"]], before[ROWS["q"]]) and torch.equal(after[ROWS["v"]], before[ROWS["v"]])
    assert not torch.equal(after[ROWS["k"]], before[ROWS["k"]])
    assert torch.equal(fused.base.bias, bias)
    # while merged, ΔW is still computed from the pretrained rows
    torch.testing.assert_close(after - before, fused.delta_weight(), rtol=0, atol=1e-12)
    unmerge(model)
    assert torch.equal(fused.base.weight, before)


def test_slice_targets_parse_and_refusals():
    assert parse_target("attn.qkv[v,q]") == ("attn.qkv", ("q", "v"))
    assert parse_target("blocks.[01].attn.qkv") == ("blocks.[01].attn.qkv", ())
    with pytest.raises(ValueError, match="distinct"):
        LoRAConfig(targets=("attn.qkv[q,q]",))
    with pytest.raises(
        ValueError, match=r"target 'attn.qkv\[q,x\]': slices must be distinct names .* got \['q', 'x'\]"
    ):
        LoRAConfig(targets=("attn.qkv[q,x]",))  # a typo in a list is not read as a glob that matches nothing
    assert parse_target("mlp.fc[12]") == ("mlp.fc[12]", ())  # a glob stays a glob
    with pytest.raises(ValueError, match="both whole and by q/k/v slices"):
        inject(make_tiny_vit(), LoRAConfig(targets=("attn.qkv", "attn.qkv[q]")))
    with pytest.raises(ValueError, match="not 3 equal slices"):
        inject(make_tiny_vit(), LoRAConfig(targets=("mlp.fc2[q]",)))
