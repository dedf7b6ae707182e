"""`wegeft-vision params` rows of the compared methods: their ViT-B/16 counts (shapes only, on the meta device)."""

from __future__ import annotations

import timm
import torch

from wegeft_vision.methods import VARIANTS, count_trainable, inject, variants
from wegeft_vision.methods.peft_compat import peft_available

EXPECTED = {
    "Shared LoRA": 24_576,  # 2 x 768 x 16: WeGeFT's count
    "GenFT (q, v)": 190_464,  # 4 x 32 x 768 shared + 12 x 2 x 5 x 768 per block
    "GenFT (proj)": 190_464,
    "FacT-TT": 61_440,  # 2 x 768 x 16 + 12 x 12 x 16^2
    "FacT-TK": 86_528,  # 2 x 768 x 32 + 32^3 + 32 x 144
}


def _count(config) -> int:
    with torch.device("meta"):
        return count_trainable(inject(timm.create_model("vit_base_patch16_224", pretrained=False), config))


def test_compared_methods_rows_and_counts():
    rows = {variant.label: variant.config() for variant in VARIANTS}
    assert {label: _count(rows[label]) for label in EXPECTED} == EXPECTED


def test_peft_rows_when_installed():
    rows = {variant.label: variant.config() for variant in variants()[len(VARIANTS) :]}
    if not peft_available():
        assert rows == {}
        return
    assert {"peft:lora", "peft:dora", "peft:vera", "peft:vblora", "peft:boft"} <= set(rows)
    assert _count(rows["peft:lora"]) == 147_456  # the paper's LoRA row: r = 8 on every attn.proj
