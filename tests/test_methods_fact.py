"""FacT-TT and FacT-TK: the network's increments as one factorized tensor (float64 reference, paper's counts)."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import clone
from method_contract import check_contract

from wegeft_vision.methods import FacTTKConfig, FacTTTConfig, count_trainable, inject, trainable_parameters
from wegeft_vision.methods.fact import AUTHORS_VTAB

R = 3
D, M = 32, 2  # the tiny ViT: embed dim, MLP hidden / d


def _kron(block, n):
    return torch.block_diag(*[block] * n)


def _reference(model, cores, scale):
    """ΔW of each layer from V, U and its core(s), written per slice."""
    f = model.blocks[0].attn.qkv.factors
    out = {}
    for i, block in enumerate(model.blocks):
        c = cores(block, i)
        qkv = torch.cat([f.v @ c["q"] @ f.u, f.v @ c["k"] @ f.u, f.v @ c["v"] @ f.u], dim=0)
        out[f"blocks.{i}.attn.qkv"] = scale * qkv
        out[f"blocks.{i}.attn.proj"] = scale * f.v @ c["proj"] @ f.u
        out[f"blocks.{i}.mlp.fc1"] = scale * _kron(f.v, M) @ c["fc1"] @ f.u
        out[f"blocks.{i}.mlp.fc2"] = scale * f.v @ c["fc2"] @ _kron(f.u, M)
    return out


def test_fact_tt_contract(tmp_path):
    def cores(block, i):
        qkv = block.attn.qkv.core
        assert block.attn.qkv.factors is block.mlp.fc2.factors  # U, V shared by the whole network
        return {
            "q": qkv[:R],
            "k": qkv[R : 2 * R],
            "v": qkv[2 * R :],
            "proj": block.attn.proj.core,
            "fc1": block.mlp.fc1.core,
            "fc2": block.mlp.fc2.core,
        }

    count = 2 * D * R + 3 * (4 + 2 * M) * R * R
    check_contract(FacTTTConfig(rank=R, scale=2.0), tmp_path, count, lambda m: _reference(m, cores, 2.0))


def test_fact_tk_contract(tmp_path):
    def cores(block, i):
        f = block.attn.qkv.factors
        assert f.p.shape == (R, 3 * (4 + 2 * M))
        base = i * (4 + 2 * M)

        def slot(t):  # the authors' FacTc @ FacTp[:, t], used as x @ Σ: the F.linear weight is its transpose
            return torch.einsum("ijk,k->ij", f.c, f.p[:, base + t]).T

        fc1 = torch.stack([torch.einsum("ijk,k->ij", f.c, f.p[:, base + 4 + t]) for t in range(M)], dim=2)
        fc2 = torch.stack([torch.einsum("ijk,k->ij", f.c, f.p[:, base + 4 + M + t]) for t in range(M)], dim=2)
        return {
            "q": slot(0),
            "k": slot(1),
            "v": slot(2),
            "proj": slot(3),
            "fc1": fc1.reshape(R, M * R).T,
            "fc2": fc2.reshape(R, M * R),
        }

    count = 2 * D * R + R**3 + R * 3 * (4 + 2 * M)
    check_contract(FacTTKConfig(rank=R, scale=0.5), tmp_path, count, lambda m: _reference(m, cores, 0.5))


def test_fact_names_and_init(tiny_vit):
    model = inject(clone(tiny_vit), FacTTKConfig(rank=4))
    names = set(trainable_parameters(model, exclude_head=True))
    assert names == {f"blocks.0.attn.qkv.factors.{n}" for n in "uvcp"}
    assert torch.count_nonzero(model.blocks[1].mlp.fc1.factors.v) == 0
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        FacTTTConfig(rank=0)
    with pytest.raises(ValueError, match="fact_tk: scale must be a non-zero finite number, got nan"):
        FacTTKConfig(scale=float("nan"))
    with pytest.raises(
        ValueError, match=r"fact_tt: rank must be at most 32, the width of blocks.0.attn.qkv \(32 -> 96\)"
    ):
        inject(clone(tiny_vit), FacTTTConfig(rank=33))


@pytest.mark.parametrize(("config", "column", "paper"), [(FacTTTConfig, 0, 0.040), (FacTTKConfig, 2, 0.069)])
def test_vit_b16_counts_average_to_the_papers(config, column, paper):
    """The paper's counts are the means over the 19 VTAB-1k tasks of the authors' per-task ranks."""

    def count(rank):
        with torch.device("meta"):  # shapes only: no memory, no init
            base = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
            return count_trainable(inject(base, config(rank=rank)))

    by_rank = {rank: count(rank) for rank in {r[column] for r in AUTHORS_VTAB.values()}}
    mean = sum(by_rank[r[column]] for r in AUTHORS_VTAB.values()) / len(AUTHORS_VTAB)
    assert round(mean / 1e6, 3) == paper
    assert count(config().rank) == {"fact_tt": 61_440, "fact_tk": 86_528}[config.method]
