"""Cluster heatmaps H = ŷ·(W·φ): known answers, agreement with hooked activations, prefix tokens, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit, randomize_trainable
from torch import nn

from wegeft_vision.methods import LoRAConfig, PromptedBlock, VPTConfig, WeGeFTConfig, inject, merge
from wegeft_vision.viz import cluster_head, cluster_heatmaps, cluster_scores, heatmap_layers, normalize_maps

# ---------------------------------------------------------------- known answers on a model that sees raw tokens

DIM, RANK, GRID, PREFIX = 4, 2, 4, 2
W_DIAG, BIAS, SCALE = (2.0, 3.0, 1.0, 1.0), (1.0, -2.0, 0.5, 0.0), 2.0


class ProjBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn.proj(x)


class TokenViT(nn.Module):
    """A one-block "ViT" whose input is its token sequence (B, T, D): `attn.proj` sees exactly what a test feeds."""

    def __init__(self, dim: int = DIM, num_prefix_tokens: int = PREFIX) -> None:
        super().__init__()
        self.blocks = nn.Sequential(ProjBlock(dim))
        self.num_prefix_tokens = num_prefix_tokens
        self.head = nn.Linear(dim, 2)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(tokens)[:, 0])


def known_model(prompts: int = 0) -> nn.Module:
    """W = diag(2, 3, 1, 1), b = (1, -2, .5, 0), φ = [e0 e1], ψ = [e2 e3]ᵀ, s = 2, so that in the d_in form
    x̂ = (x0 + 2 x2, x1 + 2 x3, x2, x3), ŷ_k = w_k x̂_k + b_k and H_k = ŷ · (W φ)_k = w_k ŷ_k  (k = 0, 1).
    """
    model = TokenViT().double()
    if prompts:
        model.blocks[0] = PromptedBlock(model.blocks[0], prompts, DIM, PREFIX, dropout=0.0)
        with torch.no_grad():
            model.blocks[0].prompts.fill_(1e3)  # would dominate every map if not dropped
    inject(model, WeGeFTConfig(rank=RANK, alpha=SCALE * RANK))
    layer = (model.blocks[0].block if prompts else model.blocks[0]).attn.proj
    eye = torch.eye(DIM, dtype=torch.float64)
    with torch.no_grad():
        layer.base.weight.copy_(torch.diag(torch.tensor(W_DIAG, dtype=torch.float64)))
        layer.base.bias.copy_(torch.tensor(BIAS, dtype=torch.float64))
        layer.projections.phi.copy_(eye[:, :RANK])
        layer.projections.psi.copy_(eye[RANK:, :])
    return model.eval()


def known_tokens(batch: int = 2) -> torch.Tensor:
    """Patch token k (raster order) has x0 = 15 − k, x2 = k, x1 = the column-major index of k, x3 = 0."""
    k = torch.arange(GRID * GRID, dtype=torch.float64)
    transposed = (k % GRID) * GRID + k // GRID
    patches = torch.stack([15 - k, transposed, k, torch.zeros_like(k)], dim=-1)  # (N, D)
    prefix = torch.tensor([[-1e3] * DIM, [1e3] * DIM], dtype=torch.float64)
    tokens = torch.cat([prefix, patches]).expand(batch, -1, -1).clone()
    tokens[1, PREFIX:] *= 3  # a second image, same normalized maps
    return tokens


def grid(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(GRID, GRID)


RAMP = grid(torch.arange(16, dtype=torch.float64))  # raster index k at row k // 4, column k % 4
TRANSPOSED = RAMP.T.contiguous()


def test_raw_maps_match_the_formula_exactly():
    tokens = known_tokens()
    x = tokens[:, PREFIX:]
    raw = cluster_scores(known_model(), tokens)[0]  # (B, r, 4, 4)
    w, b = W_DIAG, BIAS
    expected_0 = w[0] * (w[0] * (x[..., 0] + SCALE * x[..., 2]) + b[0])  # bias included
    expected_1 = w[1] * (w[1] * (x[..., 1] + SCALE * x[..., 3]) + b[1])
    expected = torch.stack([expected_0, expected_1], 1).reshape(2, RANK, GRID, GRID)
    assert raw.dtype == torch.float64 and raw.shape == (2, RANK, GRID, GRID)
    assert torch.equal(raw, expected)
    frozen = cluster_scores(known_model(), tokens, frozen=True)[0]
    assert torch.equal(frozen[:, 0], (w[0] * (w[0] * x[..., 0] + b[0])).reshape(2, GRID, GRID))


@pytest.mark.parametrize("threshold", [None, 0.5, 0.6, 0.0, 1.0])
@pytest.mark.parametrize("prompts", [0, 3])
def test_normalized_and_thresholded_maps_element_by_element(threshold, prompts):
    # adapted cluster 0: 4 (15 − k) + 8 k + 2 = 62 + 4k, i.e. k / 15 after min-max; cluster 1: transposed index / 15
    # frozen cluster 0: 4 (15 − k) + 2, i.e. (15 − k) / 15; frozen cluster 1 equals the adapted one (x3 = 0)
    model = known_model(prompts)
    adapted = cluster_heatmaps(model, known_tokens(), threshold=threshold)
    frozen = cluster_heatmaps(model, known_tokens(), threshold=threshold, frozen=True)

    def reference(values: torch.Tensor) -> torch.Tensor:
        out = values / 15.0
        return out if threshold is None else torch.where(out < threshold, 0.0, out)

    for b in range(2):
        assert torch.equal(adapted[0][b, 0], reference(RAMP))
        assert torch.equal(adapted[0][b, 1], reference(TRANSPOSED))
        assert torch.equal(frozen[0][b, 0], reference(15 - RAMP))
        assert torch.equal(frozen[0][b, 1], reference(TRANSPOSED))
    if threshold == 0.6:  # 9/15 == 0.6 exactly: a value equal to the threshold is kept
        assert adapted[0][0, 0, 2, 1] == 0.6 and adapted[0][0, 0, 2, 0] == 0


def test_normalize_maps_constant_map_is_zero_and_threshold_checked():
    maps = torch.stack([torch.full((3, 3), 7.0), torch.arange(9.0).reshape(3, 3)])
    out = normalize_maps(maps, threshold=None)
    assert torch.equal(out[0], torch.zeros(3, 3)) and out[1].max() == 1 and out[1].min() == 0
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\]"):
        normalize_maps(maps, threshold=1.5)


def test_merged_model_gives_the_same_maps():
    model, tokens = known_model(), known_tokens()
    before = cluster_scores(model, tokens), cluster_scores(model, tokens, frozen=True)
    merge(model)
    after = cluster_scores(model, tokens), cluster_scores(model, tokens, frozen=True)
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new[0], old[0], rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------- a tiny random timm ViT against hooked activations


def adapted_vit(reg_tokens: int = 0, prompts: int = 0, **overrides) -> nn.Module:
    model = make_tiny_vit(reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0, **overrides).double()
    if prompts:
        VPTConfig(num_prompts=prompts).apply(model)  # prompts + WeGeFT: built by hand, inject allows one method
    inject(model, WeGeFTConfig(rank=4))
    randomize_trainable(model)
    return model


def hooked_reference(model, images, threshold, frozen, grid_size):
    """H by hand: hook every attn.proj, project its output (or x Wᵀ + b) on W φ, drop prefix and prompt tokens."""
    records, handles = {}, []
    for i, block in enumerate(model.blocks):
        layer = (block.block if isinstance(block, PromptedBlock) else block).attn.proj
        handles.append(layer.register_forward_hook(lambda m, a, o, i=i: records.__setitem__(i, (m, a[0], o))))
    with torch.no_grad():
        model.eval()(images.double())
    for h in handles:
        h.remove()
    maps = {}
    for i, (layer, x, out) in records.items():
        block = model.blocks[i]
        drop = model.num_prefix_tokens + (block.num_prompts if isinstance(block, PromptedBlock) else 0)
        y = F.linear(x, layer.weight, layer.base.bias) if frozen else out
        h = (y @ (layer.weight @ layer.projections.phi))[:, drop:]  # (B, N, r)
        h = h.reshape(h.shape[0], *grid_size, h.shape[-1]).permute(0, 3, 1, 2)  # (B, r, gh, gw)
        low = h.amin((-2, -1), keepdim=True)
        h = (h - low) / (h.amax((-2, -1), keepdim=True) - low)
        maps[i] = h if threshold is None else torch.where(h < threshold, torch.zeros_like(h), h)
    return maps


@pytest.mark.parametrize(
    "reg_tokens, prompts, frozen, threshold",
    [(0, 0, False, 0.5), (2, 0, False, None), (0, 3, True, 0.3), (2, 2, False, 0.5), (0, 0, True, None)],
)
def test_tiny_vit_maps_equal_reference_from_hooks(images, reg_tokens, prompts, frozen, threshold):
    model = adapted_vit(reg_tokens, prompts)
    expected = hooked_reference(model, images, threshold, frozen, (4, 4))
    maps = cluster_heatmaps(model, images, threshold=threshold, frozen=frozen)
    assert sorted(maps) == [0, 1, 2]
    for i, m in maps.items():
        assert m.shape == (2, 4, 4, 4)
        torch.testing.assert_close(m, expected[i], rtol=0, atol=1e-12)
    if not frozen:  # the update changes the maps: the frozen ones differ
        assert not torch.allclose(maps[0], cluster_heatmaps(model, images, threshold=threshold, frozen=True)[0])


@pytest.mark.parametrize("frozen", [False, True])
def test_merged_tiny_vit_uses_pretrained_w_and_merged_output(images, frozen):
    model = adapted_vit(reg_tokens=2)
    expected = hooked_reference(model, images, 0.5, frozen, (4, 4))  # before merging
    merge(model)
    for i, m in cluster_heatmaps(model, images, frozen=frozen).items():
        torch.testing.assert_close(m, expected[i], rtol=0, atol=1e-9)


def test_non_square_grid_comes_from_the_patch_embedding():
    model = adapted_vit(img_size=(32, 48))
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    expected = hooked_reference(model, images, 0.5, False, (4, 6))[1]
    torch.testing.assert_close(cluster_heatmaps(model, images, layers=[1])[1], expected, rtol=0, atol=1e-12)
    maps = cluster_heatmaps(model, images, grid_size=(4, 6), layers=[1])
    torch.testing.assert_close(maps[1], expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"grid_size \(5, 5\) holds 25 tokens.*24 patch tokens"):
        cluster_heatmaps(model, images, grid_size=5)


def test_layers_selection_and_errors(images):
    model = make_tiny_vit().double()
    inject(model, WeGeFTConfig(rank=2, layers=(0, 2)))
    assert heatmap_layers(model) == [0, 2]
    assert sorted(cluster_heatmaps(model, images)) == [0, 2]
    assert sorted(cluster_heatmaps(model, images, layers=[-1, 2])) == [2]
    with pytest.raises(ValueError, match=r"blocks \[1\] have no WeGeFT on attn.proj; blocks with it: \[0, 2\]"):
        cluster_heatmaps(model, images, layers=[1])
    with pytest.raises(ValueError, match=r"layers \[7\] are not blocks of this model"):
        cluster_heatmaps(model, images, layers=[7])


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "need WeGeFT on attn.proj; the model carries no method"),
        (LoRAConfig(), "the model carries a 'lora' method"),
        (WeGeFTConfig(targets=("attn.qkv",)), r"WeGeFT on \('attn.qkv',\), not on attn.proj"),
        (WeGeFTConfig(variant="d_out"), "block 0: attn.proj uses WeGeFT's 'd_out' form; .* need the 'd_in' form"),
    ],
)
def test_refuses_models_it_cannot_handle(images, config, message):
    model = make_tiny_vit()
    if config is not None:
        inject(model, config)
    with pytest.raises(ValueError, match=message):
        cluster_heatmaps(model, images)


def test_refuses_bad_threshold_before_running(images):
    with pytest.raises(ValueError, match="threshold must be a number in \\[0, 1\\] or None, got -0.1"):
        cluster_heatmaps(adapted_vit(), images, threshold=-0.1)


def test_training_flags_restored_and_hooks_removed_even_on_error(images):
    model = adapted_vit().train()
    model.blocks[1].eval()  # a mixed state must come back as it was
    flags = {name: m.training for name, m in model.named_modules()}
    cluster_heatmaps(model, images)
    assert {name: m.training for name, m in model.named_modules()} == flags
    with pytest.raises(Exception):  # noqa: B017 (any failure of the forward pass)
        cluster_heatmaps(model, torch.randn(1, 3, 16, 16))
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(not m._forward_hooks for m in model.modules())


def test_no_gradients_and_cluster_head_is_w_phi(images):
    model = adapted_vit()
    maps = cluster_heatmaps(model, images.requires_grad_())
    assert not any(m.requires_grad for m in maps.values())
    layer = model.blocks[0].attn.proj
    torch.testing.assert_close(cluster_head(layer), layer.base.weight @ layer.projections.phi)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_maps_match_cpu(images):
    model = adapted_vit().float()
    cpu = cluster_heatmaps(model, images, threshold=None)
    gpu = cluster_heatmaps(model.cuda(), images.cuda(), threshold=None)
    for i in cpu:
        assert gpu[i].is_cuda
        torch.testing.assert_close(gpu[i].cpu(), cpu[i], rtol=0, atol=1e-4)
