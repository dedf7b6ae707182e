"""PaCa: parameter-to-cluster attention, the hyper-Transformer g_theta of GIFT v1 (Savadikar et al., arXiv 2312.00700).

The N parameter tokens Z (N, r) are pooled into M learned clusters, and each token attends to the clusters only:
    C = sigmoid(Z A^T + a)^T / N       (M, N)   cluster assignment, A: Linear(r, M)
    K_c = n(C Z)                       (M, r)   cluster tokens, L2-normalized
    P = softmax(q(Z) k(K_c)^T / sqrt(r / heads))   (heads, N, M)
    Attn(Z) = proj(P v(K_c))           (N, r)
O(N M) time and memory instead of the O(N^2) of token-to-token attention. Two forms, as in the authors' code:
"paca" is a pre-norm Transformer block with this attention; "paca_attn" is the attention alone with its residual.
Set `record = True` on a `PaCaAttention` to keep the last assignment C and attention P (detached) for drawing.
"""

from __future__ import annotations

import torch
from torch import nn

from .g_theta import GThetaSpec, L2Norm, TransformerBlock, make_norm


class PaCaAttention(nn.Module):
    """Attention from the N parameter tokens to M clusters of them."""

    def __init__(self, spec: GThetaSpec) -> None:
        super().__init__()
        if spec.rank % spec.heads:
            raise ValueError(f"paca: rank {spec.rank} is not divisible by {spec.heads} heads")
        self.heads = spec.heads
        self.q = nn.Linear(spec.rank, spec.rank)
        self.k = nn.Linear(spec.rank, spec.rank)
        self.v = nn.Linear(spec.rank, spec.rank)
        self.cluster = nn.Linear(spec.rank, spec.clusters)
        self.cluster_norm = L2Norm()  # the authors' cluster tokens are always L2-normalized
        self.proj = nn.Linear(spec.rank, spec.rank)
        self.record = False
        self.last_assignment: torch.Tensor | None = None  # (M, N)
        self.last_attention: torch.Tensor | None = None  # (heads, N, M)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, r)
        n, dim = z.shape[-2:]
        assignment = torch.sigmoid(self.cluster(z)).transpose(-2, -1) / n  # (M, N)
        clusters = self.cluster_norm(assignment @ z)  # (M, r)
        head_dim = dim // self.heads
        q = self.q(z).unflatten(-1, (self.heads, head_dim)).transpose(-3, -2)  # (heads, N, d)
        k = self.k(clusters).unflatten(-1, (self.heads, head_dim)).transpose(-3, -2)  # (heads, M, d)
        v = self.v(clusters).unflatten(-1, (self.heads, head_dim)).transpose(-3, -2)  # (heads, M, d)
        attention = torch.softmax(q @ k.transpose(-2, -1) * head_dim**-0.5, dim=-1)  # (heads, N, M)
        if self.record:
            self.last_assignment = assignment.detach()
            self.last_attention = attention.detach()
        return self.proj((attention @ v).transpose(-3, -2).flatten(-2))  # (N, r)


class PaCaBlock(TransformerBlock):
    """The full pre-norm Transformer block with PaCa attention (authors' `pamcat_transformer`)."""

    def __init__(self, spec: GThetaSpec) -> None:
        super().__init__(spec, attn=PaCaAttention(spec))


class PaCaAttnBlock(nn.Module):
    """The attention-only block (authors' `pamcat_attn`): g(Z) = Z + PaCa(n(Z))."""

    def __init__(self, spec: GThetaSpec) -> None:
        super().__init__()
        self.norm = make_norm(spec.norm, spec.rank)
        self.attn = PaCaAttention(spec)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.attn(self.norm(z))


PACA_BLOCKS = {"paca": PaCaBlock, "paca_attn": PaCaAttnBlock}
