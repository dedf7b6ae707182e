"""BitFit: train only bias terms (Ben Zaken et al., 2022); normalization layers keep theirs frozen. A fused q/k/v
projection whose biases live apart (EVA, BEiT: `q_bias`, `v_bias`; timm keeps k's a zero buffer) trains those."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from .base import MethodConfig, heads
from .options import check_flag

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    """Bias terms of every non-normalization layer become trainable.

    Args:
        include_patch_embed: also train the patch-embedding bias. The paper's 0.083M for ViT-B/16 counts the 72
            linear biases of the 12 blocks (82,944) and not the patch embedding's 768, hence False.
    """

    method: ClassVar[str] = "bitfit"

    include_patch_embed: bool = False

    def __post_init__(self) -> None:
        check_flag(self.method, "include_patch_embed", self.include_patch_embed)

    def apply(self, model: nn.Module) -> None:
        head = {m for h in heads(model) for m in h.modules()}
        found = False
        for name, module in model.named_modules():
            if module in head or isinstance(module, _NORM_TYPES):
                continue
            if name.startswith("patch_embed") and not self.include_patch_embed:
                continue
            for key, param in module.named_parameters(recurse=False):
                # a layer's `bias`, and the separate q/v biases of EVA and BEiT attention (`q_bias`, `v_bias`)
                if key == "bias" or key.endswith("_bias"):
                    param.requires_grad_(True)
                    found = True
        if not found:
            raise ValueError("bitfit: the model has no bias terms outside normalization layers and the head")
