"""Presets `paper` and `vpt` take size, mean, std and interpolation from the backbone's timm data config."""

from __future__ import annotations

import pytest
import torch

from wegeft_vision.backbones import data_config
from wegeft_vision.data import preprocessing

from .conftest import TINY_CONFIG

VIT_CONFIG = data_config("vit_base_patch16_224.augreg_in21k")


def test_paper_preset_from_the_backbone_config(tiny_vit):
    config = data_config(tiny_vit)
    prep = preprocessing("paper", config, "fgvc")
    side = config["input_size"][-1]
    assert (prep.size, prep.resize, prep.augment) == (side, side, False)
    assert prep.mean == tuple(config["mean"]) and prep.interpolation == config["interpolation"]
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = prep.pipeline(train=True)(image)
    assert out.shape == (3, side, side) and out.dtype == torch.float32
    assert torch.equal(out, prep.pipeline(train=False)(image))  # no augmentation: train == eval
    assert prep.cacheable(True) and prep.cacheable(False)


def test_normalization_uses_mean_and_std():
    prep = preprocessing("paper", TINY_CONFIG)
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    out = prep.pipeline(False)(white)
    expected = [(1 - m) / s for m, s in zip(TINY_CONFIG["mean"], TINY_CONFIG["std"], strict=True)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))


def test_vpt_preset_on_fgvc():
    prep = preprocessing("vpt", VIT_CONFIG, "fgvc")
    assert (prep.size, prep.resize, prep.interpolation) == (224, 256, "bicubic")
    image = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    torch.manual_seed(0)
    a, b = prep.pipeline(True)(image), prep.pipeline(True)(image)
    assert a.shape == b.shape == (3, 224, 224) and not torch.equal(a, b)  # random crop / flip
    eval_pipe = prep.pipeline(False)
    assert torch.equal(eval_pipe(image), eval_pipe(image))
    assert [type(t).__name__ for t in prep.geometry(False).transforms] == ["Resize", "CenterCrop"]
    assert not prep.cacheable(True) and prep.cacheable(False)


def test_vpt_preset_on_vtab_is_the_paper_resize():
    assert preprocessing("vpt", VIT_CONFIG, "vtab-1k").resize == 224


def test_errors():
    with pytest.raises(ValueError, match="unknown preprocessing preset 'noah'"):
        preprocessing("noah", TINY_CONFIG)
    with pytest.raises(ValueError, match="interpolation 'random' is not one of"):
        preprocessing("paper", {**TINY_CONFIG, "interpolation": "random"})
    with pytest.raises(ValueError, match="data config lacks mean"):
        preprocessing("paper", {k: v for k, v in TINY_CONFIG.items() if k != "mean"})
    with pytest.raises(ValueError, match="timm has no pretrained config for 'vit_nope'"):
        data_config("vit_nope")
