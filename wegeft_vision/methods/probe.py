"""The two ends of the scale: a linear probe (head only) and full fine-tuning (everything)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn

from .base import MethodConfig


@dataclasses.dataclass
class LinearProbeConfig(MethodConfig):
    """Only the classification head trains."""

    method: ClassVar[str] = "linear"

    def apply(self, model: nn.Module) -> None:
        pass


@dataclasses.dataclass
class FullFinetuneConfig(MethodConfig):
    """Every parameter trains."""

    method: ClassVar[str] = "full"

    def apply(self, model: nn.Module) -> None:
        model.requires_grad_(True)
