"""WeGeFT against the explicit weight formula in float64, sharing, init, gradients, merge and config errors."""

from __future__ import annotations

import pytest
import torch
from conftest import clone, make_tiny_vit, randomize_trainable
from torch import nn

from wegeft_vision.methods import (
    WeGeFTConfig,
    WeGeFTLinear,
    WeGeFTProjections,
    count_trainable,
    inject,
    merge,
    unmerge,
)


def explicit_reference(base: nn.Module, injected: nn.Module) -> nn.Module:
    """A copy of the base model whose targeted weights are replaced by W_hat computed from the paper's formulas."""
    ref = clone(base)
    ref.head.load_state_dict(injected.head.state_dict())
    for name, layer in injected.named_modules():
        if not isinstance(layer, WeGeFTLinear):
            continue
        proj = layer.projections
        w = ref.get_submodule(name).weight
        phi, psi, s = proj.phi.detach(), proj.psi.detach(), proj.scale
        w_hat = w + s * w @ phi @ psi if proj.variant == "d_in" else w + s * (phi @ psi).T @ w
        with torch.no_grad():
            w.copy_(w_hat)
    return ref


@pytest.mark.parametrize("variant", ["d_in", "d_out"])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("compute", ["auto", "activation", "factored", "weight"])
def test_logits_match_explicit_weight_formula_float64(tiny_vit64, images, variant, shared, compute):
    config = WeGeFTConfig(rank=4, alpha=6.0, variant=variant, shared=shared, compute=compute)
    model = inject(clone(tiny_vit64), config)
    randomize_trainable(model)
    x = images.double()
    expected = explicit_reference(tiny_vit64, model)(x)
    assert not torch.allclose(expected, tiny_vit64(x))  # the update is not a no-op
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


def test_several_shapes_get_their_own_pair(tiny_vit64, images):
    targets = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    model = inject(clone(tiny_vit64), WeGeFTConfig(rank=3, targets=targets))
    pairs = {id(m.projections) for m in model.modules() if isinstance(m, WeGeFTLinear)}
    shapes = {tuple(m.base.weight.shape) for m in model.modules() if isinstance(m, WeGeFTLinear)}
    assert len(pairs) == len(shapes) == 4  # qkv (96x32), proj (32x32), fc1 (64x32), fc2 (32x64)
    assert count_trainable(model) == sum(2 * d_in * 3 for d_in in [32, 32, 32, 64])
    randomize_trainable(model)
    torch.testing.assert_close(model(images.double()), explicit_reference(tiny_vit64, model)(images.double()))


def test_shared_pair_is_one_tensor_and_sep_is_one_per_layer(tiny_vit):
    shared = inject(clone(tiny_vit), WeGeFTConfig(rank=4))
    layers = [m for m in shared.modules() if isinstance(m, WeGeFTLinear)]
    assert len(layers) == 3 and all(m.projections is layers[0].projections for m in layers)
    assert count_trainable(shared) == 2 * 32 * 4
    sep = inject(clone(tiny_vit), WeGeFTConfig(rank=4, shared=False))
    assert len({id(m.projections) for m in sep.modules() if isinstance(m, WeGeFTLinear)}) == 3
    assert count_trainable(sep) == 3 * 2 * 32 * 4


def test_d_out_parameter_shapes(tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4, variant="d_out", targets=("mlp.fc1",)))
    proj = model.blocks[0].mlp.fc1.projections
    assert proj.phi.shape == (64, 4) and proj.psi.shape == (4, 64)


@pytest.mark.parametrize("init", ["psi_zero", "phi_zero"])
def test_initialization_leaves_the_model_unchanged(tiny_vit, images, init):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4, init=init))
    proj = model.blocks[0].attn.proj.projections
    zero, random = (proj.psi, proj.phi) if init == "psi_zero" else (proj.phi, proj.psi)
    assert torch.count_nonzero(zero) == 0
    assert torch.count_nonzero(random) == random.numel()
    # nn.Linear's default bound 1/sqrt(fan_in): fan_in is d_in for phi^T and r for psi^T.
    bound = 1 / 32**0.5 if init == "psi_zero" else 1 / 4**0.5
    assert random.abs().max() <= bound
    torch.testing.assert_close(model(images), tiny_vit(images), rtol=0, atol=0)


def test_only_method_parameters_and_head_get_gradients(tiny_vit, images):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=4))
    randomize_trainable(model)
    model.train()
    model(images).logsumexp(-1).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {
        "blocks.0.attn.proj.projections.phi",
        "blocks.0.attn.proj.projections.psi",
        "head.weight",
        "head.bias",
    }
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in with_grad)


@pytest.mark.parametrize("variant", ["d_in", "d_out"])
def test_merge_keeps_logits_and_unmerge_restores_weights_bit_for_bit(tiny_vit64, images, variant):
    model = inject(clone(tiny_vit64), WeGeFTConfig(rank=4, variant=variant, targets=("attn.proj", "mlp.fc2")))
    randomize_trainable(model)
    x = images.double()
    before = model(x)
    originals = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    merge(model)
    proj = model.blocks[1].attn.proj
    assert proj.merged and not torch.equal(proj.base.weight, originals["blocks.1.attn.proj.base.weight"])
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    merge(model)  # merging twice is a no-op
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    unmerge(model)
    for n, p in model.named_parameters():
        if n in originals:
            assert torch.equal(p, originals[n]), n
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_weight_dropout_uses_the_same_masks_on_factored_and_weight_paths(tiny_vit64, images):
    x = images.double()
    factored = inject(clone(tiny_vit64), WeGeFTConfig(rank=4, dropout=0.3))
    randomize_trainable(factored)
    weight = inject(clone(tiny_vit64), WeGeFTConfig(rank=4, dropout=0.3, compute="weight"))
    weight.load_state_dict(factored.state_dict())
    factored.train(), weight.train()
    for m in (factored, weight):  # keep only the W dropout stochastic
        for name, module in m.named_modules():
            if isinstance(module, nn.Dropout) and "projections" not in name:
                module.p = 0.0
    torch.manual_seed(5)
    out_factored = factored(x)
    torch.manual_seed(5)
    out_weight = weight(x)
    torch.testing.assert_close(out_factored, out_weight, rtol=1e-10, atol=1e-10)
    factored.eval()
    assert not torch.allclose(out_factored, factored(x))  # dropout was active in training
    torch.testing.assert_close(factored(x), explicit_reference(tiny_vit64, factored)(x))


def test_layer_subset_and_other_targets(tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=2, targets=("mlp.fc1",), layers=(0, 2)))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)]
    assert wrapped == ["blocks.0.mlp.fc1", "blocks.2.mlp.fc1"]
    model = inject(clone(tiny_vit), WeGeFTConfig(rank=2, targets=("blocks.1.attn.*",)))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, WeGeFTLinear)]
    assert wrapped == ["blocks.1.attn.qkv", "blocks.1.attn.proj"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"variant": "both"}, "variant must be 'd_in' or 'd_out'"),
        ({"init": "gauss"}, "init must be"),
        ({"g_theta": "swish"}, "unknown g_theta 'swish'"),
        ({"compute": "activation", "dropout": 0.1}, "compute='activation' is exact only"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"targets": ()}, "targets must name at least one"),
        ({"rank": True}, "rank must be a positive integer, got True"),
        ({"alpha": float("nan")}, "alpha must be a non-zero finite number or null, got nan"),
        ({"alpha": 0.0}, "alpha must be a non-zero finite number or null, got 0.0"),
        ({"alpha": "16"}, "alpha must be a non-zero finite number or null, got '16'"),
        ({"g_theta_ratio": float("inf")}, "g_theta_ratio must be a positive finite number, got inf"),
        ({"g_theta_ratio": 0.01}, "leaves no hidden unit"),
        ({"shared": "yes"}, "shared must be true or false, got 'yes'"),
        ({"layers": []}, r"layers must be a non-empty list of block indices \(or null\), got \[\]"),
        ({"layers": 3}, "layers must be a non-empty list"),
        ({"targets": ("attn.proj", 7)}, "targets must be module-name patterns, got 7"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeGeFTConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "layer"),
    [
        ({"rank": 33}, r"blocks.0.attn.proj \(32 -> 32\), got 33"),
        ({"rank": 33, "variant": "d_out", "targets": ("mlp.fc1",)}, r"blocks.0.mlp.fc1 \(32 -> 64\), got 33"),
        ({"rank": 40, "targets": ("attn.qkv[v]",), "layers": (2,)}, r"blocks.2.attn.qkv\[v\] \(32 -> 32\), got 40"),
    ],
)
def test_a_rank_above_the_layer_width_is_refused_naming_the_layer(tiny_vit, kwargs, layer):
    with pytest.raises(ValueError, match=f"wegeft: rank must be at most 32, the width of {layer}"):
        inject(clone(tiny_vit), WeGeFTConfig(**kwargs))
    assert count_trainable(inject(clone(tiny_vit), WeGeFTConfig(**{**kwargs, "rank": 32}))) > 0  # the width: fine


def test_bad_targets_are_refused_with_the_pattern_named(tiny_vit):
    with pytest.raises(ValueError, match="target 'attn.out' matches no module"):
        inject(clone(tiny_vit), WeGeFTConfig(targets=("attn.out",)))
    with pytest.raises(TypeError, match="matches 'blocks.0.norm1', a LayerNorm; expected nn.Linear"):
        inject(clone(tiny_vit), WeGeFTConfig(targets=("norm1",)))
    with pytest.raises(ValueError, match=r"layers \[7\] are not blocks of this model"):
        inject(clone(tiny_vit), WeGeFTConfig(layers=(0, 7)))


def test_injecting_twice_is_refused(tiny_vit):
    model = inject(clone(tiny_vit), WeGeFTConfig())
    with pytest.raises(ValueError, match="already carries a 'wegeft' method"):
        inject(model, WeGeFTConfig())


def test_paper_setting_on_vit_b16_has_24576_parameters():
    model = make_tiny_vit(img_size=32, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
    model = inject(model, WeGeFTConfig())
    assert count_trainable(model) == 24_576
    pairs = {id(m) for m in model.modules() if isinstance(m, WeGeFTProjections)}
    assert len(pairs) == 1
