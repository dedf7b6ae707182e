"""WeGeFT's g_theta blocks (identity, and the ablations of Table 8), acting on the compressed weight Z = f_phi(W).

Z holds N parameter tokens of width r (N = d_out rows of W @ phi in the d_in form). With n(.) the block norm
(default: L2 normalization of each token, as in the authors' GIFT code):
- sigmoid / relu / gelu:  g(Z) = act(Z), element-wise.
- mlp:          g(Z) = Z + MLP(n(Z)),                 MLP: Linear(r, m r), GELU, Linear(m r, r), m = 2.
- transformer:  Z' = Z + Attn(n(Z)) (N x N, token to token), g(Z) = Z' + MLP(n(Z')).
- mixer:        Z' = Z + MLP_tok(n(Z)^T)^T (N -> mixed_tokens -> N), g(Z) = Z' + MLP(n(Z')).
The parameter-to-cluster attention blocks (PaCa) live in `paca.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("l2", "ln", "none")


@dataclasses.dataclass(frozen=True)
class GThetaSpec:
    """What a g_theta block is built from.

    Args:
        rank: r, the width of a parameter token.
        tokens: N, the number of parameter tokens (d_out in the d_in form, d_in in the d_out form).
        norm: "l2" (each token to unit length), "ln" (LayerNorm over r) or "none".
        ratio: hidden width of the channel MLPs as a multiple of r.
        heads: attention heads (transformer, PaCa).
        clusters: M, the learned clusters of PaCa.
        mixed_tokens: hidden width of the mixer's token-mixing MLP.
    """

    rank: int
    tokens: int
    norm: str = "l2"
    ratio: float = 2.0
    heads: int = 1
    clusters: int = 64
    mixed_tokens: int = 64


class L2Norm(nn.Module):
    """Each token (last dimension) scaled to unit Euclidean length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def make_norm(name: str, dim: int) -> nn.Module:
    if name == "l2":
        return L2Norm()
    if name == "ln":
        return nn.LayerNorm(dim)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"g_theta norm must be one of {NORMS}, got {name!r}")


class Mlp(nn.Sequential):
    """Linear(d, h), GELU, Linear(h, d), with biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class MLPBlock(nn.Module):
    """g(Z) = Z + MLP(n(Z))."""

    def __init__(self, spec: GThetaSpec) -> None:
        super().__init__()
        self.norm = make_norm(spec.norm, spec.rank)
        self.mlp = Mlp(spec.rank, int(spec.rank * spec.ratio))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (..., N, r)
        return z + self.mlp(self.norm(z))


class SelfAttention(nn.Module):
    """Token-to-token multi-head attention over the N parameter tokens: an (N, N) map per head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"g_theta: rank {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, r)
        n, dim = z.shape[-2:]
        q, k, v = self.qkv(z).unflatten(-1, (3, self.heads, dim // self.heads)).movedim(-3, 0).transpose(-3, -2)
        out = F.scaled_dot_product_attention(q, k, v)  # (..., heads, N, r / heads)
        return self.proj(out.transpose(-3, -2).flatten(-2))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: Z' = Z + Attn(n(Z)), g(Z) = Z' + MLP(n(Z')); `attn` may be replaced (PaCa)."""

    def __init__(self, spec: GThetaSpec, attn: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = make_norm(spec.norm, spec.rank)
        self.attn = SelfAttention(spec.rank, spec.heads) if attn is None else attn
        self.norm2 = make_norm(spec.norm, spec.rank)
        self.mlp = Mlp(spec.rank, int(spec.rank * spec.ratio))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class MixerBlock(nn.Module):
    """MLP-Mixer block: token mixing over the N tokens (hidden `mixed_tokens`), then channel mixing over r."""

    def __init__(self, spec: GThetaSpec) -> None:
        super().__init__()
        self.norm1 = make_norm(spec.norm, spec.rank)
        self.token_mlp = Mlp(spec.tokens, spec.mixed_tokens)
        self.norm2 = make_norm(spec.norm, spec.rank)
        self.channel_mlp = Mlp(spec.rank, int(spec.rank * spec.ratio))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (..., N, r)
        z = z + self.token_mlp(self.norm1(z).transpose(-2, -1)).transpose(-2, -1)
        return z + self.channel_mlp(self.norm2(z))


def _activation(act: type[nn.Module]) -> Callable[[GThetaSpec], nn.Module]:
    def build(spec: GThetaSpec) -> nn.Module:
        return act()

    return build


BLOCKS: dict[str, Callable[[GThetaSpec], nn.Module]] = {
    "identity": _activation(nn.Identity),
    "sigmoid": _activation(nn.Sigmoid),
    "relu": _activation(nn.ReLU),
    "gelu": _activation(nn.GELU),
    "mlp": MLPBlock,
    "transformer": TransformerBlock,
    "mixer": MixerBlock,
}
