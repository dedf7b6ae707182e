"""LoRA: W_hat = W + (alpha / r) * B @ A (Hu et al., 2022); A (r, d_in) Kaiming-uniform, B (d_out, r) zeros.

Shared LoRA (`lora_shared`): one (B, A) pair for every targeted layer of a shape, W_hat_l = W_l + (alpha / r) * B @ A;
the same parameter sharing as WeGeFT without looking at W_l: the weight-unaware control of WeGeFT's Table 9.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLinear, TargetedConfig, find_linear_targets, replace_module
from .options import check_dropout, check_int, check_number, check_rank


@dataclasses.dataclass
class LoRAConfig(TargetedConfig):
    """LoRA on the linear layers named by `targets` (the paper's vision baseline: r = 8 on `attn.proj`).

    Args:
        rank: r, the inner dimension of A and B.
        alpha: scale numerator; None means `rank` (scale 1).
        dropout: dropout on the input of the low-rank branch.
    """

    method: ClassVar[str] = "lora"

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.method, "rank", self.rank)
        check_number(self.method, "alpha", self.alpha, optional=True, nonzero=True)
        check_dropout(self.method, "dropout", self.dropout)

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def apply(self, model: nn.Module) -> None:
        for name, linear in find_linear_targets(model, self.targets, self.layers):
            check_rank(self.method, "rank", self.rank, name, linear)
            replace_module(model, name, LoRALinear(linear, self))


@dataclasses.dataclass
class SharedLoRAConfig(LoRAConfig):
    """One LoRA pair (B, A) shared by all targeted layers of the same weight shape (the weight-unaware control).

    The default, r = 16 on every `attn.proj`, has exactly WeGeFT's default parameter count (2 * 768 * 16 on ViT-B/16).
    """

    method: ClassVar[str] = "lora_shared"

    rank: int = 16

    def apply(self, model: nn.Module) -> None:
        owners: dict[tuple[int, int], LoRALinear] = {}
        for name, linear in find_linear_targets(model, self.targets, self.layers):
            check_rank(self.method, "rank", self.rank, name, linear)
            shape = tuple(linear.weight.shape)
            layer = LoRALinear(linear, self, shared_with=owners.get(shape))
            owners.setdefault(shape, layer)
            replace_module(model, name, layer)


class LoRALinear(AdapterLinear):
    """y = x W^T + b + s * B A dropout(x)."""

    def __init__(self, base: nn.Linear, config: LoRAConfig, shared_with: LoRALinear | None = None) -> None:
        super().__init__(base)
        if shared_with is not None:  # the very parameters of another layer (shared LoRA)
            self.lora_A, self.lora_B = shared_with.lora_A, shared_with.lora_B
        else:
            factory = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.lora_A = nn.Parameter(torch.empty(config.rank, base.in_features, **factory))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.rank, **factory))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout)
        self.scale = config.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return torch.add(self.base(x), update, alpha=self.scale)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scale={self.scale:g}, merged={self.merged}"
