"""Shared fixtures: tiny random-weight timm ViTs (no downloads) and inputs for them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)


def make_tiny_vit(num_classes: int = 5, seed: int = 0, **overrides) -> nn.Module:
    """A 3-block ViT on 32x32 inputs with random weights, deterministic for a given seed."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=num_classes, **{**TINY_VIT, **overrides}
    )


@pytest.fixture
def tiny_vit() -> nn.Module:
    return make_tiny_vit().eval()


@pytest.fixture
def tiny_vit64() -> nn.Module:
    return make_tiny_vit().double().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomize_trainable(model: nn.Module, seed: int = 2, std: float = 0.3) -> None:
    """Non-zero values for every trainable tensor: an identity init would hide merge and formula bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def fake_hub_cache(cache: Path, repo_id: str, tensors: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout of a downloaded `model.safetensors`, as a first (online) run would leave it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(repo / "snapshots" / commit / "model.safetensors"))


def smoke_final_spec(root: Path, **changes):
    """A final WeGeFT run of the smoke preset on the synthetic shapes task under `root`; `changes`: `RunConfig`
    fields (stage, stop_epoch, overrides, devices, ...)."""
    from wegeft_vision.data.lookup import find_task
    from wegeft_vision.protocol.preset import load_preset
    from wegeft_vision.protocol.runs import RunSpec
    from wegeft_vision.training.run_config import RunConfig

    preset = load_preset("smoke")
    task = find_task("vtab-1k", "synthetic_shape", root)
    fields = dict(
        recipe=preset.fit_config,
        method=preset.methods["wegeft"].config,
        data=task.data_arguments(),
        stage="final",
        lr=5e-3,
        weight_decay=1e-4,
        seed=0,
    )
    config = RunConfig(**{**fields, **changes})
    return RunSpec("vtab-1k", task.name, "wegeft", "smoke", preset.fingerprint(), config, task.identity())
