"""GenFT: ΔW from W by a column then a row transformation with shared and per-block factors (float64 reference)."""

from __future__ import annotations

import pytest
import torch
from conftest import clone, make_tiny_vit
from method_contract import check_contract

from wegeft_vision.methods import GenFTConfig, GenFTLinear, inject, trainable_parameters

ROWS = {"q": slice(0, 32), "v": slice(64, 96)}


def _leaky(t):
    return torch.where(t > 0, t, 0.01 * t)


def _genft(w, gen, part, c=1.4, s=1.0):
    """The module docstring's formula written out by hand."""
    a1, b1 = c * torch.cat([gen.a1, part.a]), c * torch.cat([gen.b1, part.b], 1)
    a2, b2 = c * torch.cat([gen.a2, part.a]), c * torch.cat([gen.b2, part.b], 1)
    f = _leaky(w @ a1.T @ b1.T)
    return s * _leaky(f.T @ a2.T @ b2.T).T


def test_genft_on_q_and_v_contract(tmp_path):
    config = GenFTConfig(rank=4, layer_rank=2)

    def reference(model):
        out = {}
        gen = model.blocks[0].attn.qkv.slices["q"].generator
        for i, block in enumerate(model.blocks):
            q, v = block.attn.qkv.slices["q"], block.attn.qkv.slices["v"]
            assert q.generator is gen and v.generator is gen and q.part is v.part  # per-block part shared by q, v
            w = block.attn.qkv.base.weight
            delta = torch.zeros_like(w)
            for name, layer in (("q", q), ("v", v)):
                delta[ROWS[name]] = _genft(w[ROWS[name]], gen, layer.part)
            out[f"blocks.{i}.attn.qkv"] = delta
        return out

    # shared: 4 factors of r x d; per block: a (k, d) and b (d, k)
    check_contract(config, tmp_path, 4 * 4 * 32 + 3 * 2 * 2 * 32, reference, zero_init=False)


def test_genft_on_proj_contract(tmp_path):
    config = GenFTConfig(rank=3, layer_rank=1, targets=("attn.proj",), ratio=0.9, scaling=0.5)

    def reference(model):
        gen = model.blocks[0].attn.proj.generator
        return {
            f"blocks.{i}.attn.proj": _genft(b.attn.proj.base.weight, gen, b.attn.proj.part, c=0.9, s=0.5)
            for i, b in enumerate(model.blocks)
        }

    check_contract(config, tmp_path, 4 * 3 * 32 + 3 * 2 * 32, reference, zero_init=False)


def test_genft_defaults_dropout_and_refusals(tiny_vit):
    config = GenFTConfig()
    assert (config.rank, config.layer_rank, config.ratio, config.scaling, config.dropout) == (32, 5, 1.4, 1.0, 0.1)
    model = inject(clone(tiny_vit), config)
    layer = model.blocks[0].attn.qkv.slices["q"]
    assert isinstance(layer, GenFTLinear)
    assert torch.count_nonzero(layer.part.a) == 0 and torch.count_nonzero(layer.part.b) == 0
    names = set(trainable_parameters(model, exclude_head=True))
    assert "blocks.0.attn.qkv.slices.q.generator.a1" in names and "blocks.2.attn.qkv.slices.q.part.b" in names
    x = torch.randn(4, 32)
    model.train()
    assert not torch.equal(layer(x), layer(x))  # dropout on the generated weight while training
    model.eval()
    assert torch.equal(layer(x), layer(x))
    with pytest.raises(ValueError, match="square weights"):
        inject(make_tiny_vit(), GenFTConfig(targets=("mlp.fc1",)))
    with pytest.raises(ValueError, match="unknown outer activation"):
        GenFTConfig(outer="swish")
    with pytest.raises(ValueError, match="genft: scaling must be a non-zero finite number, got inf"):
        GenFTConfig(scaling=float("inf"))
    with pytest.raises(ValueError, match="genft: layer_rank must be a non-negative integer, got -1"):
        GenFTConfig(layer_rank=-1)
    with pytest.raises(
        ValueError, match=r"genft: rank must be at most 32, the width of blocks.0.attn.proj \(32 -> 32\)"
    ):
        inject(make_tiny_vit(), GenFTConfig(rank=33, targets=("attn.proj",)))
