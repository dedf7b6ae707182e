"""FacT (Jie & Deng, AAAI 2023): the whole ViT's weight increments as one factorized tensor.

Every block's q, k, v, proj (d x d) and fc1, fc2 (m chunks of d x d, m = mlp hidden / d) are d x d slices of one
tensor ΔW (d, d, depth * (4 + 2m)), factorized with U (r, d) and V (d, r) shared by the whole network:

    ΔW_slice = s · V · Σ_slice · U      (nn.Linear layout; the update is s · V(D(Σ(U x))), D: dropout 0.1)

- FacT-TT (tensor-train): each slice has its own free core Σ (r, r): (4 + 2m) r² per block.
- FacT-TK (Tucker): Σ_t = (C ×₃ P[:, t])ᵀ from one core C (r, r, r) and P (r, depth * (4 + 2m)).

Chunked layers follow the authors' code: fc1's output is m chunks of d and its core (m r, r) maps U x to m chunks of
r, each through V; fc2's input is m chunks of d, each through U, and its core is (r, m r). In FacT-TK fc1's and fc2's
cores are C ×₃ P[:, m slots] reshaped (r, r, m) -> (r, m r) (fc1's transposed). Init as the authors: U nn.Linear
default, V zeros (ΔW = 0 at initialization), TT cores nn.Linear default, TK's C and P Xavier-uniform.

Ranks and scales are per task in the authors' VTAB-1k configs (`AUTHORS_VTAB`): TT r ∈ {4, 8, 16}, TK r ∈ {16, 32},
s ∈ {0.01 .. 100}. The paper's 0.040M (TT) and 0.069M (TK) are the means over the 19 tasks of those ranks' counts;
the defaults here are the largest rank of each (TT 16: 61,440 on ViT-B/16; TK 32: 86,528) with the most common scale.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLinear, MethodConfig, find_linear_targets, replace_module
from .options import check_dropout, check_int, check_number, check_rank

ROLES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

# The authors' per-task settings (FacT/configs/{tt,tk}/<task>.yaml): task -> (TT rank, TT scale, TK rank, TK scale).
AUTHORS_VTAB: dict[str, tuple[int, float, int, float]] = {
    "cifar": (8, 1.0, 32, 0.1),
    "caltech101": (16, 10.0, 32, 10.0),
    "dtd": (8, 0.01, 16, 0.01),
    "oxford_flowers102": (16, 1.0, 32, 1.0),
    "oxford_iiit_pet": (8, 1.0, 16, 10.0),
    "svhn": (16, 100.0, 32, 100.0),
    "sun397": (8, 1.0, 16, 1.0),
    "patch_camelyon": (8, 10.0, 32, 10.0),
    "eurosat": (8, 100.0, 32, 100.0),
    "resisc45": (8, 0.1, 32, 10.0),
    "diabetic_retinopathy": (8, 1.0, 16, 1.0),
    "clevr_count": (16, 1.0, 32, 10.0),
    "clevr_dist": (4, 10.0, 16, 10.0),
    "dmlab": (16, 10.0, 32, 10.0),
    "kitti": (16, 10.0, 32, 10.0),
    "dsprites_loc": (16, 100.0, 32, 100.0),
    "dsprites_ori": (16, 1.0, 32, 1.0),
    "smallnorb_azi": (16, 100.0, 32, 100.0),
    "smallnorb_ele": (8, 10.0, 16, 10.0),
}


@dataclasses.dataclass
class FacTTTConfig(MethodConfig):
    """FacT-TT on every block's attention and MLP linear layers.

    Args:
        rank: r, the inner dimension of U, V and the cores.
        scale: s, multiplies every ΔW.
        dropout: on the core's output.
    """

    method: ClassVar[str] = "fact_tt"
    tucker: ClassVar[bool] = False

    rank: int = 16
    scale: float = 1.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.method, "rank", self.rank)
        check_number(self.method, "scale", self.scale, nonzero=True)
        check_dropout(self.method, "dropout", self.dropout)

    def apply(self, model: nn.Module) -> None:
        try:
            targets = find_linear_targets(model, ROLES)
        except ValueError as err:  # e.g. a SwiGLU MLP (fc1_g, fc1_x) has no fc1
            raise ValueError(f"{self.method}: FacT adapts every block's {', '.join(ROLES)}; {err}") from err
        dim = targets[0][1].in_features  # the first block's qkv: d
        check_rank(self.method, "rank", self.rank, *targets[0])  # U (r, d): d is every layer's width
        layers = []
        for name, linear in targets:
            role = next(r for r in ROLES if name.endswith(r))
            d_out, d_in = linear.weight.shape
            if role != ROLES[-1] and d_in != dim:  # stages of other widths (Swin) do not share one d x d tensor
                raise ValueError(
                    f"{self.method}: {name} takes {d_in} features, but FacT's factors are shared by layers of one "
                    f"width d = {dim} (the first block's); this model's blocks are of several widths"
                )
            if d_out % dim or d_in % dim:
                raise ValueError(f"{self.method}: {name} is {d_out}x{d_in}, not made of {dim}x{dim} slices")
            layers.append((name, linear, role, d_out // dim, d_in // dim))
        factory = {"device": targets[0][1].weight.device, "dtype": targets[0][1].weight.dtype}
        slots = sum(max(a, b) for *_, a, b in layers)  # qkv 3, proj 1, fc1 m, fc2 m per block
        factors = FacTFactors(dim, self, slots, **factory)
        start = 0
        for name, linear, role, a, b in layers:
            count = max(a, b)
            replace_module(model, name, FacTLinear(linear, factors, role, a, b, range(start, start + count), self))
            start += count


@dataclasses.dataclass
class FacTTKConfig(FacTTTConfig):
    """FacT-TK (Tucker): the cores are slices of C (r, r, r) along P (r, slots)."""

    method: ClassVar[str] = "fact_tk"
    tucker: ClassVar[bool] = True

    rank: int = 32
    scale: float = 10.0


class FacTFactors(nn.Module):
    """The tensors shared by the whole network: U (r, d), V (d, r) and, for FacT-TK, C (r, r, r) and P (r, slots)."""

    def __init__(self, dim: int, config: FacTTTConfig, slots: int, device=None, dtype=None) -> None:
        super().__init__()
        r, factory = config.rank, {"device": device, "dtype": dtype}
        self.u = nn.Parameter(torch.empty(r, dim, **factory))
        self.v = nn.Parameter(torch.zeros(dim, r, **factory))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
        if config.tucker:
            self.c = nn.Parameter(torch.empty(r, r, r, **factory))
            self.p = nn.Parameter(torch.empty(r, slots, **factory))
            nn.init.xavier_uniform_(self.c)
            nn.init.xavier_uniform_(self.p)


class FacTLinear(AdapterLinear):
    """A frozen linear layer of a ViT block made of (a x b) slices of d x d, updated by s · V Σ U per slice."""

    def __init__(
        self, base: nn.Linear, factors: FacTFactors, role: str, a: int, b: int, slots: range, config: FacTTTConfig
    ) -> None:
        super().__init__(base)
        self.factors, self.role, self.a, self.b = factors, role, a, b
        self.slots = (slots.start, slots.stop)
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout)
        r = config.rank
        if not config.tucker:
            self.core = nn.Parameter(torch.empty(a * r, b * r, device=base.weight.device, dtype=base.weight.dtype))
            nn.init.kaiming_uniform_(self.core, a=math.sqrt(5))  # the authors' nn.Linear cores

    def sigma(self) -> torch.Tensor:
        """Σ (a r, b r): maps the b chunks of U x to the a chunks fed to V."""
        if not hasattr(self.factors, "c"):
            return self.core
        f = self.factors
        cores = torch.einsum("ijk,kt->ijt", f.c, f.p[:, self.slots[0] : self.slots[1]])  # (r, r, n)
        r = f.c.shape[0]
        if self.role == "mlp.fc1":
            return cores.reshape(r, -1).T  # (m r, r)
        if self.role == "mlp.fc2":
            return cores.reshape(r, -1)  # (r, m r)
        return torch.cat([cores[:, :, t].T for t in range(cores.shape[2])], dim=0)  # q, k, v (or proj) stacked

    def delta_weight(self) -> torch.Tensor:
        f = self.factors
        v, u = torch.block_diag(*[f.v] * self.a), torch.block_diag(*[f.u] * self.b)
        return self.scale * (v @ self.sigma() @ u)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        f, lead = self.factors, x.shape[:-1]
        h = F.linear(x.reshape(*lead, self.b, -1), f.u).reshape(*lead, -1)  # (..., b r)
        h = self.dropout(F.linear(h, self.sigma()))  # (..., a r)
        update = F.linear(h.reshape(*lead, self.a, -1), f.v).reshape(*lead, -1)  # (..., a d)
        return torch.add(self.base(x), update, alpha=self.scale)

    def extra_repr(self) -> str:
        return f"role={self.role}, chunks={self.a}x{self.b}, slots={self.slots}, scale={self.scale:g}"
