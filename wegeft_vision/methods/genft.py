"""GenFT (Zhang, Xu & Ng, 2025, arXiv 2506.11042): ΔW generated from W by a column then a row transformation.

For a square weight W (d, d) of a targeted layer l (nn.Linear convention, y = x W^T + b):

    F  = D(σ(W  · A1^T · B1^T))          column transformation, (d, d)
    ΔW = s · D(σ(F^T · A2^T · B2^T))^T   row transformation, transposed back to W's layout
    A1 = c · [A1_shared; a_l]   A2 = c · [A2_shared; a_l]        (r + k, d)
    B1 = c · [B1_shared, b_l]   B2 = c · [B2_shared, b_l]        (d, r + k)

Our reading of the formulation, following the authors' vision code: each transformation is a rank-(r + k) bottleneck
whose factors concatenate r rows (columns) shared by every targeted layer of the shape with k layer-specific ones;
the layer-specific pair (a_l (k, d), b_l (d, k), zero-initialized) is the same in both transformations and is shared by
all targeted layers of one block (the q and v slices of `attn.qkv`). The inner non-linearity (between A and B) is the
identity, the outer σ LeakyReLU (slope 0.01), D dropout (0.1), and every concatenated factor is multiplied by c = 1.4
with s = 1. The shared factors take nn.Linear's default (Kaiming-uniform) init, so unlike LoRA or WeGeFT, ΔW is not
zero at initialization. The factors have no bias (the authors' code can add one). Only square weights are supported
(the layer-specific parts serve both transformations).

Defaults are the authors' vision setting: the q and v slices of every `attn.qkv`, r = 32, k = 5; targets
`("attn.proj",)` gives the like-for-like comparison with WeGeFT. ΔW is rebuilt (d x d) every training step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLinear, TargetedConfig, block_index, find_linear_targets, replace_module
from .options import check_dropout, check_int, check_number, check_rank

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


@dataclasses.dataclass
class GenFTConfig(TargetedConfig):
    """GenFT on the linear layers named by `targets` (default: the q and v slices of every `attn.qkv`).

    Args:
        rank: r, the rows (columns) of each factor shared by all targeted layers of a shape.
        layer_rank: k, the layer-specific rows (columns), one pair per block shared by its targets; 0 for none.
        ratio: c, multiplies every concatenated factor.
        scaling: s, multiplies ΔW.
        dropout: on the output of each transformation.
        outer: σ, after each transformation (a name in `ACTIVATIONS`).
        inner: between A and B inside each transformation.
    """

    method: ClassVar[str] = "genft"

    targets: tuple[str, ...] = ("attn.qkv[q,v]",)
    rank: int = 32
    layer_rank: int = 5
    ratio: float = 1.4
    scaling: float = 1.0
    dropout: float = 0.1
    outer: str = "leaky_relu"
    inner: str = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.method, "rank", self.rank)
        check_int(self.method, "layer_rank", self.layer_rank, minimum=0)
        for name in ("ratio", "scaling"):
            check_number(self.method, name, getattr(self, name), nonzero=True)
        check_dropout(self.method, "dropout", self.dropout)
        for key in ("outer", "inner"):
            name = getattr(self, key)
            if name not in ACTIVATIONS:
                raise ValueError(f"genft: unknown {key} activation {name!r}; known: {sorted(ACTIVATIONS)}")

    def apply(self, model: nn.Module) -> None:
        generators: dict[tuple[int, int], GenFTGenerator] = {}
        parts: dict[tuple, GenFTLayerPart] = {}
        for name, linear in find_linear_targets(model, self.targets, self.layers):
            d_out, d_in = shape = tuple(linear.weight.shape)
            if d_out != d_in:
                raise ValueError(f"genft: {name} has a {d_out}x{d_in} weight; GenFT here needs square weights")
            check_rank(self.method, "rank", self.rank, name, linear)
            factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
            if shape not in generators:
                generators[shape] = GenFTGenerator(d_in, self, **factory)
            block = block_index(name)
            key = (block, shape) if block is not None else (name.partition("[")[0], shape)
            if key not in parts:
                parts[key] = GenFTLayerPart(d_in, self.layer_rank, **factory)
            replace_module(model, name, GenFTLinear(linear, generators[shape], parts[key]))


class GenFTLayerPart(nn.Module):
    """The layer-specific rows a (k, d) and columns b (d, k) of the factors, zero-initialized."""

    def __init__(self, dim: int, layer_rank: int, device=None, dtype=None) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(layer_rank, dim, device=device, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(dim, layer_rank, device=device, dtype=dtype))


class GenFTGenerator(nn.Module):
    """The shared factors A1, A2 (r, d) and B1, B2 (d, r) and the map (W, layer part) -> ΔW."""

    def __init__(self, dim: int, config: GenFTConfig, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.a1 = nn.Parameter(torch.empty(config.rank, dim, **factory))
        self.b1 = nn.Parameter(torch.empty(dim, config.rank, **factory))
        self.a2 = nn.Parameter(torch.empty(config.rank, dim, **factory))
        self.b2 = nn.Parameter(torch.empty(dim, config.rank, **factory))
        for p in (self.a1, self.b1, self.a2, self.b2):  # nn.Linear(d, r).weight and nn.Linear(r, d).weight init
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        self.ratio, self.scaling = config.ratio, config.scaling
        self.outer, self.inner = ACTIVATIONS[config.outer](), ACTIVATIONS[config.inner]()
        self.dropout = nn.Dropout(config.dropout)

    def transform(self, m: torch.Tensor, a: torch.Tensor, b: torch.Tensor, part: GenFTLayerPart) -> torch.Tensor:
        """σ(inner(m · A^T) · B^T) with A = c [a; a_l] (r + k, d), B = c [b, b_l] (d, r + k)."""
        a = self.ratio * torch.cat([a, part.a], dim=0)
        b = self.ratio * torch.cat([b, part.b], dim=1)
        return self.outer(F.linear(self.inner(F.linear(m, a)), b))

    def delta_weight(self, weight: torch.Tensor, part: GenFTLayerPart, dropout: bool = True) -> torch.Tensor:
        drop = self.dropout if dropout else nn.Identity()
        columns = drop(self.transform(weight, self.a1, self.b1, part))  # F (d, d)
        rows = drop(self.transform(columns.T, self.a2, self.b2, part))  # (d, d), W's transpose layout
        return self.scaling * rows.T

    def extra_repr(self) -> str:
        return f"dim={self.a1.shape[1]}, rank={self.a1.shape[0]}, ratio={self.ratio:g}, scaling={self.scaling:g}"


class GenFTLinear(AdapterLinear):
    """A frozen linear layer plus the GenFT update generated from its own weight."""

    def __init__(self, base: nn.Linear, generator: GenFTGenerator, part: GenFTLayerPart) -> None:
        super().__init__(base)
        self.generator = generator
        self.part = part

    def delta_weight(self) -> torch.Tensor:
        return self.generator.delta_weight(self.weight, self.part, dropout=False)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.generator.delta_weight(self.base.weight, self.part)
        return self.base(x) + F.linear(x, delta)

    def extra_repr(self) -> str:
        return f"layer_rank={self.part.a.shape[0]}, merged={self.merged}"
