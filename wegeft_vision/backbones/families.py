"""The backbone families people fine-tune, as data: a real timm architecture and tag, a tiny random configuration of
the same code (tests, the support matrix), and what the "head" of every method is on that family.

On every family the head is timm's classifier (`get_classifier()`), created new for the task's classes and trained by
every method; everything before it (final norm, pooling, attention pool) is the pretrained backbone and stays frozen
unless the method trains it. A linear probe is that head alone on the frozen pooled feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of timm backbones.

    Args:
        name: short name for command lines and tables (`dinov2-reg`).
        label: for tables (`DINOv2 + registers`).
        backbone: `architecture.tag` of a real pretrained model of the family.
        tiny: timm arguments that make a tiny random model of the same architecture code (float64 tests).
        head: what the trained head reads and what stays frozen before it.
    """

    name: str
    label: str
    backbone: str
    tiny: Mapping[str, Any]
    head: str

    @property
    def architecture(self) -> str:
        return self.backbone.split(".")[0]


_TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)  # the family's own ratios
_TINY_PATCH14 = dict(_TINY_VIT, img_size=28, patch_size=14)
_TINY_SWIN = dict(img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4))

FAMILIES: tuple[Family, ...] = (
    Family(
        "vit",
        "ViT (AugReg, the paper's)",
        "vit_base_patch16_224.augreg_in21k",
        _TINY_VIT,
        "`head` on the class token after the final `norm` (frozen)",
    ),
    Family(
        "deit-distilled",
        "DeiT distilled",
        "deit_base_distilled_patch16_224.fb_in1k",
        _TINY_VIT,
        "`head` on the class token and `head_dist` on the distillation token, both new and trained; the logits are "
        "their mean, as timm computes them outside distillation training (train and eval alike)",
    ),
    Family(
        "dinov2-reg",
        "DINOv2 + registers",
        "vit_base_patch14_reg4_dinov2.lvd142m",
        _TINY_PATCH14,
        "`head` on the class token after the final `norm` (frozen); the 4 register tokens are prefix tokens "
        "(dropped in heatmaps, skipped by VPT); patch 14, weights at 518 px resampled by timm for another `img_size`",
    ),
    Family(
        "clip",
        "CLIP image tower",
        "vit_base_patch16_clip_224.openai",
        _TINY_VIT,
        "`head` on the class token after the final `norm` (frozen), i.e. the pre-projection feature; the pre-norm "
        "`norm_pre` stays frozen and the image-text projection (timm's 512-way `head` of the weights) is dropped",
    ),
    Family(
        "siglip",
        "SigLIP image tower",
        "vit_base_patch16_siglip_224.webli",
        _TINY_VIT,
        "`head` on the output of the pretrained attention-pool head `attn_pool` (latent query attention and MLP, "
        "frozen); no class token, so every token is a patch token",
    ),
    Family(
        "eva02",
        "EVA-02 (fused qkv)",
        "eva02_small_patch14_224.mim_in22k",
        _TINY_PATCH14,
        "`head` on the class token after the final `norm` (frozen); separate q/v biases (BitFit trains them), "
        "rotary position embeddings",
    ),
    Family(
        "eva02-unfused",
        "EVA-02 (q, k, v apart)",
        "eva02_base_patch14_224.mim_in22k",
        _TINY_PATCH14,
        "`head` on the class token after the final `norm` (frozen); `attn.qkv` targets mean `q_proj`, `k_proj`, "
        "`v_proj`",
    ),
    Family(
        "beit",
        "BEiT",
        "beit_base_patch16_224.in22k_ft_in22k",
        _TINY_VIT,
        "`head` on the mean of the patch tokens after `fc_norm` (frozen); separate q/v biases (BitFit trains them), "
        "relative position bias",
    ),
    Family(
        "swin",
        "Swin",
        "swin_base_patch4_window7_224.ms_in22k",
        _TINY_SWIN,
        "`head.fc` on the average of the last stage's tokens after the final `norm` (frozen); attention within "
        "shifted windows, blocks counted across stages",
    ),
    Family(
        "swinv2",
        "Swin-V2",
        "swinv2_base_window12_192.ms_in22k",
        _TINY_SWIN,
        "as Swin (`head.fc` on the averaged last stage, frozen `norm`); post-norm blocks, cosine attention with a "
        "continuous position bias, separate q/v biases (BitFit trains them)",
    ),
)

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}


def family(name: str) -> Family:
    """The family called `name`.

    Raises:
        ValueError: no family has that name (the message lists them).
    """
    if name not in BY_NAME:
        raise ValueError(f"unknown backbone family {name!r}; families: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def tiny_model(name: str, num_classes: int = 3, seed: int = 0, **changes: Any) -> nn.Module:
    """The family's tiny random configuration (`changes` override its arguments), float64, eval mode.

    Every tensor is then moved off its initial value by seeded noise (std 0.02): a fresh init zeroes biases, q/v
    biases and Swin-V2's post-norm weights, which would hide a path that goes around them. Deterministic for a seed.
    """
    fam = family(name)
    generator = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = timm.create_model(fam.architecture, num_classes=num_classes, **{**fam.tiny, **changes})
    finally:
        torch.random.set_rng_state(torch_state)
    model = model.double().eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.02)
    return model
