"""WeGeFT: W_hat = W + (alpha / r) * f_psi(g_theta(f_phi(W))) (Savadikar, Song & Wu, ICML 2025).

d_in form:  W_hat = W + (alpha / r) * W @ phi @ psi,      phi (d_in, r),  psi (r, d_in)
d_out form: W_hat = W + (alpha / r) * (phi @ psi).T @ W,  phi (d_out, r), psi (r, d_out)

One (phi, psi) pair, the `WeGeFTProjections`, serves every targeted layer of the same shape (WeGeFT) or each layer owns
one (WeGeFT-Sep). g_theta is the identity by default; the non-linear g_theta of the ablations (`g_theta.py`) and
GIFT v1's PaCa (`paca.py`) act on the N = d_out (d_in form) or d_in (d_out form) parameter tokens of width r. Three
compute paths give the same output:
- "activation" (identity g_theta, no active dropout): d_in  x_hat = x + s (x psi^T) phi^T, y = x_hat W^T + b;
                                                     d_out z = x W^T, y = z + s (z phi) psi + b.
  Only (tokens x r) work per layer, no d x d matrix: LoRA's cost.
- "factored" (any g_theta, dropout on W as in Eq. 13): Z = g(D(W) phi) (d_out, r), y = x W^T + b + s (x psi^T) Z^T
  (d_out form: Z = g(phi^T D(W)) (r, d_in), y = x W^T + b + s (x Z^T) psi).
- "weight": rebuild W_hat every step and apply it; the naive reference, and what `merge` folds in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLinear, TargetedConfig, find_linear_targets, replace_module
from .g_theta import BLOCKS, NORMS, GThetaSpec
from .input_side import input_side_linear
from .options import check_dropout, check_flag, check_int, check_number, check_rank
from .paca import PACA_BLOCKS

Variant = Literal["d_in", "d_out"]
Compute = Literal["auto", "activation", "factored", "weight"]

# g_theta acting on the compressed weight as N tokens of width r; non-linear ones are ablations (Table 8) or GIFT v1.
G_THETA: dict[str, Callable[[GThetaSpec], nn.Module]] = {**BLOCKS, **PACA_BLOCKS}


@dataclasses.dataclass
class WeGeFTConfig(TargetedConfig):
    """WeGeFT on the linear layers named by `targets` (default: every MHSA output projection).

    Args:
        rank: r, the inner dimension of phi and psi.
        alpha: scale numerator; None means `rank`, i.e. a scale of 1 as in the authors' vision code.
        variant: "d_in" (phi, psi act on the input side of W) or "d_out" (output side).
        shared: one (phi, psi) per weight shape across layers; False gives WeGeFT-Sep (one pair per layer).
        dropout: dropout on W before f_phi (Eq. 13); needs the factored path while training.
        init: "psi_zero" (authors' code: psi zeros, phi Kaiming-uniform) or "phi_zero" (paper appendix D.6).
        g_theta: name of g_theta in `G_THETA`: identity, sigmoid, relu, gelu, mlp, transformer, mixer, paca,
            paca_attn (one g_theta per (phi, psi) pair, i.e. shared like them).
        g_theta_per_layer: one g_theta per targeted layer while (phi, psi) stay shared, as the authors' code builds
            the hypernets of a fused qkv target (`_init_gift_for_merged_modules`); their single-module path, the
            default here, shares one.
        g_theta_norm: the blocks' token norm: "l2" (authors' default), "ln" or "none".
        g_theta_ratio: hidden width of the blocks' channel MLPs, as a multiple of r.
        g_theta_heads: attention heads of the transformer and PaCa blocks.
        num_clusters: M, the clusters of PaCa.
        num_mixed_tokens: hidden width of the mixer's token-mixing MLP.
        compute: "auto" picks "activation" when it is exact, else "factored"; see the module docstring.
    """

    method: ClassVar[str] = "wegeft"

    rank: int = 16
    alpha: float | None = None
    variant: Variant = "d_in"
    shared: bool = True
    dropout: float = 0.0
    init: Literal["psi_zero", "phi_zero"] = "psi_zero"
    g_theta: str = "identity"
    g_theta_per_layer: bool = False
    compute: Compute = "auto"
    g_theta_norm: str = "l2"
    g_theta_ratio: float = 2.0
    g_theta_heads: int = 1
    num_clusters: int = 64
    num_mixed_tokens: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.method, "rank", self.rank)
        check_number(self.method, "alpha", self.alpha, optional=True, nonzero=True)
        if self.variant not in ("d_in", "d_out"):
            raise ValueError(f"wegeft: variant must be 'd_in' or 'd_out', got {self.variant!r}")
        if self.init not in ("psi_zero", "phi_zero"):
            raise ValueError(f"wegeft: init must be 'psi_zero' or 'phi_zero', got {self.init!r}")
        if self.g_theta not in G_THETA:
            raise ValueError(f"wegeft: unknown g_theta {self.g_theta!r}; known: {sorted(G_THETA)}")
        if self.g_theta_norm not in NORMS:
            raise ValueError(f"wegeft: g_theta_norm must be one of {NORMS}, got {self.g_theta_norm!r}")
        for name in ("g_theta_heads", "num_clusters", "num_mixed_tokens"):
            check_int(self.method, name, getattr(self, name))
        check_number(self.method, "g_theta_ratio", self.g_theta_ratio, positive=True)
        if self.rank % self.g_theta_heads:
            raise ValueError(f"wegeft: rank must be divisible by g_theta_heads ({self.rank} by {self.g_theta_heads})")
        if int(self.rank * self.g_theta_ratio) < 1:
            raise ValueError(f"wegeft: g_theta_ratio {self.g_theta_ratio!r} x rank {self.rank} leaves no hidden unit")
        for name in ("shared", "g_theta_per_layer"):
            check_flag(self.method, name, getattr(self, name))
        if self.compute not in ("auto", "activation", "factored", "weight"):
            raise ValueError(f"wegeft: compute must be auto|activation|factored|weight, got {self.compute!r}")
        check_dropout(self.method, "dropout", self.dropout)
        if self.compute == "activation" and (self.g_theta != "identity" or self.dropout > 0):
            raise ValueError("wegeft: compute='activation' is exact only with the identity g_theta and dropout 0")

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def apply(self, model: nn.Module) -> None:
        shared: dict[tuple[int, int], tuple[WeGeFTProjections, nn.Module | None]] = {}
        per_layer = self.g_theta_per_layer and self.shared
        for name, linear in find_linear_targets(model, self.targets, self.layers):
            check_rank(self.method, "rank", self.rank, name, linear)
            shape = tuple(linear.weight.shape)
            dim, tokens = linear.in_features, linear.out_features
            if self.variant == "d_out":
                dim, tokens = tokens, dim
            where = dict(device=linear.weight.device, dtype=linear.weight.dtype)
            if not self.shared or shape not in shared:
                # built before phi is initialized: seeded runs draw as in earlier versions
                g_theta = None if per_layer else build_g_theta(self, tokens, **where)
                shared[shape] = WeGeFTProjections(dim, self, **where), g_theta
            projections, g_theta = shared[shape]
            if per_layer:
                g_theta = build_g_theta(self, tokens, **where)
            replace_module(model, name, WeGeFTLinear(linear, projections, g_theta, self.compute))


def build_g_theta(config: WeGeFTConfig, tokens: int, device=None, dtype=None) -> nn.Module:
    """The g_theta named by `config.g_theta`, for `tokens` parameter tokens of width r."""
    spec = GThetaSpec(
        rank=config.rank,
        tokens=tokens,
        norm=config.g_theta_norm,
        ratio=config.g_theta_ratio,
        heads=config.g_theta_heads,
        clusters=config.num_clusters,
        mixed_tokens=config.num_mixed_tokens,
    )
    return G_THETA[config.g_theta](spec).to(device=device, dtype=dtype)


class WeGeFTProjections(nn.Module):
    """The projections phi (dim, r) and psi (r, dim) with the dropout on W, and the map from W to ΔW through a g_theta.

    Shared by the layers of one weight shape unless WeGeFT-Sep; g_theta belongs to the layers (`WeGeFTLinear`).
    """

    def __init__(self, dim: int, config: WeGeFTConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.variant = config.variant
        self.scale = config.scale
        self.phi = nn.Parameter(torch.zeros(dim, config.rank, device=device, dtype=dtype))
        self.psi = nn.Parameter(torch.zeros(config.rank, dim, device=device, dtype=dtype))
        self.weight_dropout = nn.Dropout(config.dropout)
        # The transposes are nn.Linear(dim, r).weight and nn.Linear(r, dim).weight: use their default init.
        if config.init == "psi_zero":
            nn.init.kaiming_uniform_(self.phi.data.T, a=math.sqrt(5))
        else:
            nn.init.kaiming_uniform_(self.psi.data.T, a=math.sqrt(5))

    def exact_in_activation_space(self, g_theta: nn.Module) -> bool:
        """Whether ΔW is linear in W right now (identity g_theta, no active dropout), so x·ΔWᵀ needs no d × d work."""
        dropout_active = self.training and self.weight_dropout.p > 0
        return isinstance(g_theta, nn.Identity) and not dropout_active

    def compressed_weight(self, weight: torch.Tensor, g_theta: nn.Module, dropout: bool = True) -> torch.Tensor:
        """g_theta(f_phi(W)): (d_out, r) for d_in, (r, d_in) for d_out."""
        if dropout:
            weight = self.weight_dropout(weight)
        if self.variant == "d_in":
            return g_theta(weight @ self.phi)  # (d_out, r): d_out tokens
        return g_theta((self.phi.T @ weight).T).T  # tokens are the d_in columns

    def delta_weight(self, weight: torch.Tensor, g_theta: nn.Module, dropout: bool = True) -> torch.Tensor:
        """ΔW = f_psi(g_theta(f_phi(W))), shape of W."""
        compressed = self.compressed_weight(weight, g_theta, dropout)
        delta = compressed @ self.psi if self.variant == "d_in" else self.psi.T @ compressed
        return self.scale * delta

    def extra_repr(self) -> str:
        return f"variant={self.variant}, dim={self.phi.shape[0]}, rank={self.phi.shape[1]}, scale={self.scale:g}"


class WeGeFTLinear(AdapterLinear):
    """A frozen linear layer whose weight is generated as W + ΔW(W) by (possibly shared) `projections` and `g_theta`
    (shared like them, or the layer's own with `g_theta_per_layer`)."""

    def __init__(
        self, base: nn.Linear, projections: WeGeFTProjections, g_theta: nn.Module, compute: Compute = "auto"
    ) -> None:
        super().__init__(base)
        self.projections = projections
        self.g_theta = g_theta
        self.compute = compute

    def delta_weight(self) -> torch.Tensor:
        return self.projections.delta_weight(self.weight, self.g_theta, dropout=False)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.compute
        if path == "auto":
            path = "activation" if self.projections.exact_in_activation_space(self.g_theta) else "factored"
        if path == "activation":
            return self._activation_forward(x)
        if path == "factored":
            return self._factored_forward(x)
        weight = self.base.weight + self.projections.delta_weight(self.base.weight, self.g_theta)
        return F.linear(x, weight, self.base.bias)

    def _activation_forward(self, x: torch.Tensor) -> torch.Tensor:
        proj, scale = self.projections, self.projections.scale
        if proj.variant == "d_in":
            return input_side_linear(x, proj.phi, proj.psi, self.base.weight, self.base.bias, scale)
        z = F.linear(x, self.base.weight)  # (..., d_out)
        y = torch.add(z, F.linear(F.linear(z, proj.phi.T), proj.psi.T), alpha=scale)
        return y if self.base.bias is None else y + self.base.bias

    def _factored_forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.projections
        compressed = proj.compressed_weight(self.base.weight, self.g_theta)
        if proj.variant == "d_in":
            update = F.linear(F.linear(x, proj.psi), compressed)  # (..., r) -> (..., d_out)
        else:
            update = F.linear(F.linear(x, compressed), proj.psi.T)  # (..., r) -> (..., d_out)
        return torch.add(self.base(x), update, alpha=proj.scale)

    def extra_repr(self) -> str:
        return f"compute={self.compute}, merged={self.merged}"
