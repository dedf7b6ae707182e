"""VPT-deep: learnable prompt tokens inserted after the prefix tokens before each block, dropped after it (Jia et al.,
2022).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from .base import MethodConfig, replace_module
from .options import check_dropout, check_int, check_layers


@dataclasses.dataclass
class VPTConfig(MethodConfig):
    """Deep visual prompt tuning on a timm ViT (`model.blocks`): prompts go after the prefix tokens (class, registers,
    distillation token), so DeiT-distilled, DINOv2 with registers, CLIP and SigLIP (no class token) take them; on EVA
    the prompted blocks' attention counts the prompts among the prefix tokens its rotary embedding skips (prompts have
    no position). Refused with the reason on Swin (windows) and BEiT (relative position bias).

    Args:
        num_prompts: prompt tokens per block (the paper's vision baseline: 5).
        dropout: dropout on the prompts.
        layers: blocks that get prompts; None means every block (VPT-deep).
    """

    method: ClassVar[str] = "vpt"
    mergeable: ClassVar[bool] = False

    num_prompts: int = 5
    dropout: float = 0.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_int(self.method, "num_prompts", self.num_prompts)
        check_dropout(self.method, "dropout", self.dropout)
        self.layers = check_layers(self.method, self.layers)

    def apply(self, model: nn.Module) -> None:
        blocks = _prompt_ready_blocks(model)
        layers = range(len(blocks)) if self.layers is None else self.layers
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"vpt: layers {bad} are not blocks of this model (it has blocks 0..{len(blocks) - 1})")
        dim = model.embed_dim
        patch = model.patch_embed.patch_size
        # VPT's uniform init: Xavier over the patch embedding's fan-in (3 * p * p) and the token width.
        bound = math.sqrt(6.0 / float(3 * patch[0] * patch[1] + dim))
        rotary = getattr(model, "rope", None) is not None
        for i in layers:
            prompted = PromptedBlock(blocks[i], self.num_prompts, dim, model.num_prefix_tokens, self.dropout)
            nn.init.uniform_(prompted.prompts, -bound, bound)
            if rotary:  # EVA: prompts, like the class token, are not rotated (they have no position)
                blocks[i].attn.num_prefix_tokens = model.num_prefix_tokens + self.num_prompts
            replace_module(model, f"blocks.{i}", prompted)


def _prompt_ready_blocks(model: nn.Module) -> nn.Sequential | nn.ModuleList:
    """The blocks prompts go between, or why this model has no place for them."""
    name = type(model).__name__
    blocks = getattr(model, "blocks", None)
    if blocks is None and hasattr(model, "layers"):
        raise TypeError(
            f"vpt: {name} attends within windows of a 2-D token grid that patch merging halves between stages; "
            "there is no token sequence to insert prompts into (VPT is defined for plain ViTs)"
        )
    rotary = getattr(model, "rope", None) is not None
    counted = all(isinstance(getattr(getattr(b, "attn", None), "num_prefix_tokens", None), int) for b in blocks or ())
    if rotary and not counted:
        raise TypeError(
            f"vpt: {name} rotates every token after its prefix tokens with rotary position embeddings built for the "
            "patch grid, and its attention does not say how many prefix tokens it skips"
        )
    if any(hasattr(m, "relative_position_bias_table") for m in model.modules()):
        raise TypeError(
            f"vpt: {name}'s attention adds a relative position bias table sized for the class token and the patch "
            "window; prompt tokens have no entry in it"
        )
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not isinstance(
        getattr(model, "num_prefix_tokens", None), int
    ):
        raise TypeError(f"vpt: expected a timm ViT with `blocks` and `num_prefix_tokens`, got {name}")
    if not rotary and not isinstance(blocks, nn.Sequential):
        raise TypeError(f"vpt: expected a timm ViT whose `blocks` run in sequence, got {name}")
    return blocks


class PromptedBlock(nn.Module):
    """Runs `block` on [prefix tokens, prompts, patch tokens] and returns [prefix tokens, patch tokens]."""

    def __init__(self, block: nn.Module, num_prompts: int, dim: int, num_prefix_tokens: int, dropout: float) -> None:
        super().__init__()
        self.block = block
        ref = next(block.parameters())
        self.prompts = nn.Parameter(torch.zeros(num_prompts, dim, device=ref.device, dtype=ref.dtype))
        self.dropout = nn.Dropout(dropout)
        self.num_prefix_tokens = num_prefix_tokens

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("vpt: attention masks are not supported with prompt tokens")
        n = self.num_prefix_tokens
        prompts = self.dropout(self.prompts).expand(x.shape[0], -1, -1)  # (B, P, D)
        x = self.block(torch.cat([x[:, :n], prompts, x[:, n:]], dim=1), **kwargs)
        return torch.cat([x[:, :n], x[:, n + self.num_prompts :]], dim=1)
