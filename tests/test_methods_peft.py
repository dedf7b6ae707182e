"""HuggingFace peft methods through the method contract (skipped without the `peft` extra)."""

from __future__ import annotations

import pytest
import torch
from conftest import clone, make_tiny_vit, randomize_trainable
from method_contract import HEAD

pytest.importorskip("peft")

from wegeft_vision.methods import (  # noqa: E402
    HFPeftConfig,
    LoRAConfig,
    config_from_dict,
    count_trainable,
    inject,
    load_adapter,
    merge,
    peft_compat,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from wegeft_vision.methods.hf_peft import KINDS as DEFAULTS  # noqa: E402

# small options so that every kind fits the tiny ViT's 32-wide attn.proj
KINDS = {
    "lora": {"r": 2},
    "dora": {"r": 2},
    "vera": {"r": 8},
    "vblora": {"r": 2, "vector_length": 8, "num_vectors": 6},
    "boft": {"boft_block_size": 4},
    "loha": {"r": 2},
    "lokr": {"r": 2},
    "ia3": {},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_peft_kind_contract(kind, tmp_path, tiny_vit64, images):
    config = HFPeftConfig(kind=kind, options=KINDS[kind])
    assert config_from_dict(config.to_dict()) == config
    x = images.double()
    model = inject(clone(tiny_vit64), config).eval()
    trainable = set(trainable_parameters(model))
    assert HEAD <= trainable and all(".attn.proj." in n for n in trainable - HEAD)
    assert count_trainable(model) > 0
    if kind not in ("loha", "lokr", "vblora"):  # these start from a non-zero update by design in peft
        torch.testing.assert_close(model(x), tiny_vit64(x), rtol=0, atol=1e-10)
    randomize_trainable(model, std=0.1)
    logits = model(x)
    assert not torch.allclose(logits, tiny_vit64(x))
    original = model.blocks[0].attn.proj.get_base_layer().weight.detach().clone()
    merge(model)
    torch.testing.assert_close(model(x), logits, rtol=1e-8, atol=1e-9)
    unmerge(model)
    assert torch.equal(model.blocks[0].attn.proj.get_base_layer().weight, original)
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    path = save_adapter(model, tmp_path / "a.safetensors")
    fresh = load_adapter(make_tiny_vit().double().eval(), path).eval()
    torch.testing.assert_close(fresh(x), logits, rtol=0, atol=0)


def test_our_lora_and_peft_lora_give_the_same_logits(tiny_vit64, images):
    ours = inject(clone(tiny_vit64), LoRAConfig(rank=3, alpha=6.0)).eval()
    randomize_trainable(ours)
    theirs = inject(clone(tiny_vit64), HFPeftConfig(kind="lora", options={"r": 3, "lora_alpha": 6})).eval()
    params = trainable_parameters(theirs)
    with torch.no_grad():
        for i, block in enumerate(ours.blocks):
            params[f"blocks.{i}.attn.proj.lora_A.default.weight"].copy_(block.attn.proj.lora_A)
            params[f"blocks.{i}.attn.proj.lora_B.default.weight"].copy_(block.attn.proj.lora_B)
        params["head.weight"].copy_(ours.head.weight)
        params["head.bias"].copy_(ours.head.bias)
    assert count_trainable(ours) == count_trainable(theirs)
    torch.testing.assert_close(theirs(images.double()), ours(images.double()), rtol=1e-12, atol=1e-12)


def test_unknown_kind_and_bad_options():
    with pytest.raises(ValueError, match="unknown kind 'nonesuch'"):
        inject(make_tiny_vit(), HFPeftConfig(kind="nonesuch"))
    with pytest.raises(ValueError, match="does not take options"):
        inject(make_tiny_vit(), HFPeftConfig(kind="lora", options={"rank_typo": 3}))
    with pytest.raises(ValueError, match="peft: options.lora_alpha must be a finite number, got nan"):
        HFPeftConfig(kind="lora", options={"lora_alpha": float("nan")})
    with pytest.raises(ValueError, match=r"options.r must be at most 32, the width of blocks.0.attn.proj \(32 -> 32\)"):
        inject(make_tiny_vit(), HFPeftConfig(kind="dora", options={"r": 33}))
    with pytest.raises(ValueError, match="peft: vblora with options {}: `in_features` 32 must be divisible by"):
        inject(make_tiny_vit(), HFPeftConfig(kind="vblora"))  # peft's own check, with the kind named


def test_peft_provides_what_peft_compat_relies_on():
    """A new peft that drops or changes what `peft_compat` uses fails here, naming it."""
    assert peft_compat.missing() == []
    classes = peft_compat.config_classes()
    assert {peft_type for peft_type, _, _ in DEFAULTS.values()} <= set(classes)
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTuner

    tuners = {str(t.value): cls for t, cls in PEFT_TYPE_TO_TUNER_MAPPING.items()}
    assert all(issubclass(tuners[peft_type], BaseTuner) for peft_type, _, _ in DEFAULTS.values())
    model = make_tiny_vit()
    peft_compat.inject(model, HFPeftConfig(kind="lora", options={"r": 2}).peft_config(), "default")
    layers = peft_compat.tuner_layers(model)
    assert len(layers) == len(model.blocks) and all(layer.get_base_layer() is not layer for layer in layers)


def test_a_peft_lacking_what_we_rely_on_is_refused_by_name(monkeypatch):
    from peft.tuners import tuners_utils

    monkeypatch.delattr(tuners_utils.BaseTunerLayer, "get_base_layer")
    assert peft_compat.missing() == ["BaseTunerLayer.get_base_layer"]
    with pytest.raises(ValueError, match=r"peft \S+ lacks what method \"peft\" relies on: BaseTunerLayer\.get_base"):
        inject(make_tiny_vit(), HFPeftConfig())
