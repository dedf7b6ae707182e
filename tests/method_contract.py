"""The checks every weight-update method passes (trainable set, zero init, formula, merge, adapter file, count)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from conftest import clone, make_tiny_vit, randomize_trainable
from torch import nn

from wegeft_vision.methods import (
    MethodConfig,
    count_trainable,
    inject,
    load_adapter,
    merge,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from wegeft_vision.methods.base import adapter_layers

HEAD = {"head.weight", "head.bias"}
# name of an adapted layer -> its full ΔW computed from the method's formula (float64)
Reference = Callable[[nn.Module], dict[str, torch.Tensor]]


def adapted_names(model: nn.Module) -> list[str]:
    layers = {id(m) for m in adapter_layers(model)}
    return [n for n, m in model.named_modules() if id(m) in layers]


def check_contract(
    config: MethodConfig,
    tmp_path: Path,
    expected_count: int,
    reference: Reference,
    zero_init: bool = True,
) -> nn.Module:
    """Run `config` through the shared contract on a float64 tiny ViT; returns the randomized injected model."""
    base = make_tiny_vit().double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    backbone_names = {n for n, _ in base.named_parameters()}
    model = inject(clone(base), config).eval()

    # only method tensors and the head train; the frozen backbone is untouched
    trainable = set(trainable_parameters(model))
    assert HEAD <= trainable
    assert not (trainable - HEAD) & backbone_names
    assert all(".base." not in n for n in trainable - HEAD)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert len(frozen) == len(backbone_names) - len(HEAD)
    assert count_trainable(model) == expected_count

    if zero_init:
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-12)

    # ΔW from the formula, and the model equals the backbone with W + ΔW
    randomize_trainable(model, std=0.1)
    expected = reference(model)
    names = adapted_names(model)
    assert sorted(expected) == sorted(names)
    layers = dict(model.named_modules())
    ref = clone(base)
    ref.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        for name, delta in expected.items():
            torch.testing.assert_close(layers[name].delta_weight(), delta, rtol=1e-10, atol=1e-12)
            assert delta.abs().max() > 0
            ref.get_submodule(name).weight += delta
    logits = model(x)
    torch.testing.assert_close(logits, ref(x), rtol=1e-9, atol=1e-10)

    # merge equals the adapted model, unmerge restores the very pretrained tensors
    originals = {n: layers[n].base.weight.detach().clone() for n in names}
    merge(model)
    torch.testing.assert_close(model(x), logits, rtol=1e-9, atol=1e-10)
    unmerge(model)
    for n in names:
        assert torch.equal(layers[n].base.weight, originals[n])
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)

    # adapter round trip onto a fresh backbone
    path = save_adapter(model, tmp_path / f"{config.method}.safetensors")
    fresh = load_adapter(make_tiny_vit().double().eval(), path)
    assert set(trainable_parameters(fresh)) == trainable
    torch.testing.assert_close(fresh(x), logits, rtol=0, atol=0)
    return model
