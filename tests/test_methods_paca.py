"""PaCa (GIFT v1's parameter-to-cluster attention): O(N·M) tensors only, the recorded clusters, and their pictures
through `wegeft-vision visualize --clusters`.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

from wegeft_vision.cli import main
from wegeft_vision.methods import GThetaSpec, PaCaAttnBlock, PaCaBlock, WeGeFTConfig, inject, save_adapter
from wegeft_vision.viz import paca_clusters

N, M, R = 96, 8, 4
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
PACA = WeGeFTConfig(rank=R, g_theta="paca", num_clusters=M)


class ShapeLog(TorchDispatchMode):
    """Every tensor shape an aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("block", [PaCaBlock, PaCaAttnBlock])
@pytest.mark.parametrize("heads", [1, 2])
def test_no_token_to_token_tensor_is_formed(block, heads):
    g = block(GThetaSpec(rank=R, tokens=N, heads=heads, clusters=M))
    z = torch.randn(N, R, requires_grad=True)
    with ShapeLog() as log:
        g(z).square().sum().backward()
    assert (heads, N, M) in log.shapes  # the attention of each token over the clusters
    assert (M, N) in log.shapes  # the cluster assignment
    assert not [s for s in log.shapes if s.count(N) >= 2], "an N x N tensor was allocated"
    assert max(int(np.prod(s)) for s in log.shapes) <= heads * N * M


def test_attention_rows_sum_to_one_and_assignment_is_scaled_sigmoid():
    g = PaCaBlock(GThetaSpec(rank=R, tokens=N, clusters=M))
    g.attn.record = True
    g(torch.randn(N, R))
    assignment, attention = g.attn.last_assignment, g.attn.last_attention
    assert assignment.shape == (M, N) and attention.shape == (1, N, M)
    assert ((assignment > 0) & (assignment < 1 / N)).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, N))
    g.attn.record = False
    g.attn.last_assignment = None
    g(torch.randn(N, R))
    assert g.attn.last_assignment is None  # nothing kept unless asked


def test_paca_clusters_per_layer():
    model = inject(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3, **TINY), PACA)
    found = paca_clusters(model)
    assert list(found) == [f"blocks.{i}.attn.proj" for i in range(2)]
    clusters = found["blocks.0.attn.proj"]
    assert clusters.assignment.shape == (M, 32) and clusters.attention.shape == (1, 32, M)
    assert sorted(clusters.order.tolist()) == list(range(32))
    dominant = clusters.assignment.argmax(0)[clusters.order]
    assert (np.diff(dominant) >= 0).all()  # rows grouped by their dominant cluster


def test_paca_clusters_of_per_layer_blocks_are_each_layers_own():
    config = dataclasses.replace(PACA, g_theta_per_layer=True)
    model = inject(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3, **TINY), config)
    with torch.no_grad():
        model.blocks[1].attn.proj.g_theta.attn.cluster.bias.fill_(20.0)  # only layer 1's own assignment moves
    found = paca_clusters(model)
    assert found["blocks.1.attn.proj"].assignment.min() > 0.99
    assert found["blocks.0.attn.proj"].assignment.max() < 0.99


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("paca")
    torch.manual_seed(0)
    base = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3, **TINY)
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, weights)
    paths = {}
    for name, config in (("paca", PACA), ("wegeft", WeGeFTConfig(rank=R))):
        model = inject(copy.deepcopy(base), config)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.3)
        paths[name] = save_adapter(model, root / f"{name}.safetensors", backbone_overrides=TINY)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    return {"weights": weights, "images": images, **paths}


def _visualize(adapters, adapter, out):
    args = ["visualize", "--adapter", str(adapters[adapter]), "--weights", str(adapters["weights"])]
    return main([*args, "--images", str(adapters["images"]), "--out", str(out), "--clusters"])


def test_visualize_clusters_draws_each_paca_layer(adapters, tmp_path, capsys):
    assert _visualize(adapters, "paca", tmp_path) == 0
    assert "wrote 2 PaCa cluster figures" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "clusters").iterdir()) == sorted(
        f"blocks.{i}.attn.proj.{ext}" for i in range(2) for ext in ("png", "npz")
    )
    picture = np.asarray(Image.open(tmp_path / "clusters" / "blocks.1.attn.proj.png").convert("RGB"))
    assert picture.shape[0] > 100 and picture.shape[1] > 100 and picture.std() > 0
    saved = np.load(tmp_path / "clusters" / "blocks.1.attn.proj.npz")
    assert saved["assignment"].shape == (M, 32) and saved["attention"].shape == (1, 32, M)
    assert ((saved["assignment"] > 0) & (saved["assignment"] < 1)).all()
    assert len(list((tmp_path / "images").iterdir())) == 2  # the token heatmaps are still drawn beside them


def test_visualize_clusters_refuses_an_adapter_without_paca(adapters, tmp_path, capsys):
    assert _visualize(adapters, "wegeft", tmp_path) == 2
    assert "--clusters needs an adapter with g_theta 'paca'" in capsys.readouterr().err
