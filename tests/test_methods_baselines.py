"""LoRA, BitFit, VPT-deep, linear probe and full fine-tuning: trainable sets, counts, formulas and prompt handling."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import clone, make_tiny_vit, randomize_trainable

from wegeft_vision.methods import (
    BitFitConfig,
    FullFinetuneConfig,
    LinearProbeConfig,
    LoRAConfig,
    LoRALinear,
    PromptedBlock,
    SharedLoRAConfig,
    VPTConfig,
    count_trainable,
    inject,
    merge,
    trainable_parameters,
    unmerge,
)

HEAD = {"head.weight", "head.bias"}


def test_lora_matches_explicit_formula_and_merges(tiny_vit64, images):
    model = inject(clone(tiny_vit64), LoRAConfig(rank=3, alpha=5.0))
    assert count_trainable(model) == 3 * 3 * (32 + 32)
    layer = model.blocks[0].attn.proj
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    randomize_trainable(model)
    x = images.double()
    ref = clone(tiny_vit64)
    ref.head.load_state_dict(model.head.state_dict())
    for i, block in enumerate(ref.blocks):
        adapted = model.blocks[i].attn.proj
        with torch.no_grad():
            block.attn.proj.weight += 5.0 / 3 * adapted.lora_B @ adapted.lora_A
    expected = ref(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    original = layer.base.weight.detach().clone()
    merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    unmerge(model)
    assert torch.equal(layer.base.weight, original)


def test_lora_trainable_set(tiny_vit):
    model = inject(clone(tiny_vit), LoRAConfig(targets=("attn.qkv",), layers=(2,)))
    assert set(trainable_parameters(model)) == {"blocks.2.attn.qkv.lora_A", "blocks.2.attn.qkv.lora_B"} | HEAD
    assert isinstance(model.blocks[2].attn.qkv, LoRALinear)
    assert count_trainable(model) == 8 * (32 + 96)


def test_bitfit_trains_non_norm_biases(tiny_vit):
    model = inject(clone(tiny_vit), BitFitConfig())
    per_block = {"attn.qkv.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias"}
    expected = {f"blocks.{i}.{b}" for i in range(3) for b in per_block}
    assert set(trainable_parameters(model, exclude_head=True)) == expected
    assert count_trainable(model) == 3 * (96 + 32 + 64 + 32)
    with_patch = inject(clone(tiny_vit), BitFitConfig(include_patch_embed=True))
    assert count_trainable(with_patch) == count_trainable(model) + 32


def test_linear_probe_and_full(tiny_vit):
    probe = inject(clone(tiny_vit), LinearProbeConfig())
    assert set(trainable_parameters(probe)) == HEAD and count_trainable(probe) == 0
    full = inject(clone(tiny_vit), FullFinetuneConfig())
    assert count_trainable(full, exclude_head=False) == sum(p.numel() for p in tiny_vit.parameters())
    merge(full)  # nothing to fold: a no-op, not an error
    unmerge(full)


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_vpt_inserts_prompts_after_prefix_tokens_and_drops_them(images, reg_tokens):
    base = make_tiny_vit(reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0).double().eval()
    model = inject(clone(base), VPTConfig(num_prompts=4))
    assert count_trainable(model) == 3 * 4 * 32
    randomize_trainable(model)
    x = images.double()
    seen = {}
    for i, block in enumerate(model.blocks):
        assert isinstance(block, PromptedBlock)
        block.block.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, inp[0]))
    logits = model(x)
    assert logits.shape == (2, 5)
    n = base.num_prefix_tokens
    assert n == 1 + reg_tokens
    for i, tokens in seen.items():
        assert tokens.shape == (2, n + 4 + 16, 32)
        torch.testing.assert_close(tokens[:, n : n + 4], model.blocks[i].prompts.expand(2, -1, -1), rtol=0, atol=0)

    # Reference by hand: run the frozen blocks on [prefix, prompts, patches] and drop the prompts after each one.
    tokens = base.norm_pre(base.patch_drop(base._pos_embed(base.patch_embed(x))))
    for i, block in enumerate(base.blocks):
        prompts = model.blocks[i].prompts.expand(2, -1, -1)
        out = block(torch.cat([tokens[:, :n], prompts, tokens[:, n:]], dim=1))
        tokens = torch.cat([out[:, :n], out[:, n + 4 :]], dim=1)
    torch.testing.assert_close(logits, model.forward_head(base.norm(tokens)), rtol=1e-10, atol=1e-10)


def test_vpt_init_layers_and_refusals(tiny_vit):
    model = inject(clone(tiny_vit), VPTConfig(num_prompts=5, layers=(0,)))
    assert isinstance(model.blocks[0], PromptedBlock) and not isinstance(model.blocks[1], PromptedBlock)
    bound = (6.0 / (3 * 8 * 8 + 32)) ** 0.5
    prompts = model.blocks[0].prompts
    assert 0 < prompts.abs().max() <= bound
    with pytest.raises(ValueError, match="cannot be merged"):
        merge(model)
    with pytest.raises(ValueError, match=r"layers \[3\] are not blocks"):
        inject(clone(tiny_vit), VPTConfig(layers=(3,)))
    with pytest.raises(ValueError, match="num_prompts must be a positive integer"):
        VPTConfig(num_prompts=0)
    with pytest.raises(ValueError, match=r"vpt: dropout must be in \[0, 1\), got nan"):
        VPTConfig(dropout=float("nan"))
    with pytest.raises(ValueError, match=r"vpt: layers must be a non-empty list of block indices \(or null\)"):
        VPTConfig(layers=())  # would prompt no block at all: a linear probe under another name


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LoRAConfig(alpha=float("nan")), "lora: alpha must be a non-zero finite number or null, got nan"),
        (lambda: LoRAConfig(alpha=float("-inf")), "lora: alpha must be a non-zero finite number or null, got -inf"),
        (lambda: LoRAConfig(rank=False), "lora: rank must be a positive integer, got False"),
        (lambda: LoRAConfig(dropout="0.1"), r"lora: dropout must be in \[0, 1\), got '0.1'"),
        (lambda: LoRAConfig(layers=(0, -1)), "lora: layers must be a non-empty list of block indices"),
        (lambda: SharedLoRAConfig(alpha=0), "lora_shared: alpha must be a non-zero finite number or null, got 0"),
        (lambda: BitFitConfig(include_patch_embed="false"), "bitfit: include_patch_embed must be true or false"),
    ],
)
def test_options_a_run_could_not_use_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("config", [LoRAConfig(rank=33), SharedLoRAConfig(rank=33, targets=("mlp.fc2",))])
def test_a_lora_rank_above_the_layer_width_is_refused(tiny_vit, config):
    name = "blocks.0.attn.proj (32 -> 32)" if config.targets == ("attn.proj",) else "blocks.0.mlp.fc2 (64 -> 32)"
    with pytest.raises(
        ValueError, match=re.escape(f"{config.method}: rank must be at most 32, the width of {name}, got 33")
    ):
        inject(clone(tiny_vit), config)


def test_merge_without_method_is_refused(tiny_vit):
    with pytest.raises(ValueError, match="carries no method"):
        merge(tiny_vit)
