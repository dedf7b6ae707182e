"""BitFit: train only bias terms (Ben Zaken et al., 2022); normalization layers keep theirs frozen."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from .base import MethodConfig, classifier
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
        head = set(classifier(model).modules())
        found = False
        for name, module in model.named_modules():
            bias = getattr(module, "bias", None)
            if module in head or isinstance(module, _NORM_TYPES) or not isinstance(bias, nn.Parameter):
                continue
            if name.startswith("patch_embed") and not self.include_patch_embed:
                continue
            bias.requires_grad_(True)
            found = True
        if not found:
            raise ValueError("bitfit: the model has no bias terms outside normalization layers and the head")
