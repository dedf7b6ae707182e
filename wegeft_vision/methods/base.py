"""What every method shares: the config base, target matching, freezing, injection, merge/unmerge and counting.

A method is a config dataclass (a subclass of `MethodConfig`) whose `apply` edits a frozen model in place, plus its
layer math in its own module. Freezing, the trainable head, merging and parameter counts live here, once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .options import check_layers
from .participation import require_participation
from .timm_attention import route_adapted_qkv

CONFIG_ATTR = "peft_config"
_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")
_SLICES = re.compile(r"^(.*[^\[.])\[([^\[\]]+)\]$")  # attn.qkv[q,v]; a [...] of other letters and no comma is a glob
QKV = ("q", "k", "v")  # the row blocks of a fused attention projection, in timm's order


@dataclasses.dataclass
class MethodConfig:
    """Base of every method config; a subclass names its `method` and implements `apply`."""

    method: ClassVar[str]
    mergeable: ClassVar[bool] = True

    def apply(self, model: nn.Module) -> None:
        """Insert the method into `model`, whose parameters are all frozen when this is called."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that `config_from_dict` turns back into an equal config."""
        return {"method": self.method, **dataclasses.asdict(self)}

    def merge_model(self, model: nn.Module) -> None:
        """Fold the method's updates into the frozen weights (`merge`); methods with layers of their own override."""
        for layer in adapter_layers(model):
            layer.merge()

    def unmerge_model(self, model: nn.Module) -> None:
        """Undo `merge_model`, restoring the very pretrained tensors."""
        for layer in adapter_layers(model):
            layer.unmerge()


@dataclasses.dataclass
class TargetedConfig(MethodConfig):
    """A method that wraps linear layers chosen by name.

    Args:
        targets: module-name patterns; a pattern matches a name it equals or ends with (after a dot), or a glob
            (`blocks.*.attn.*`) that selects the linear layers it matches; a suffix `[q]`, `[v]`, `[q,v]` selects
            those row blocks of a fused q/k/v projection (`attn.qkv[q,v]`).
        layers: block indices (`blocks.<i>.`) to keep among the matches; None keeps every block.
    """

    targets: tuple[str, ...] = ("attn.proj",)
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets:
            raise ValueError(f"{self.method}: targets must name at least one module pattern")
        for target in self.targets:
            if not isinstance(target, str) or not target:
                raise ValueError(f"{self.method}: targets must be module-name patterns, got {target!r}")
            parse_target(target)  # refuse a bad q/k/v slice list here, not at injection
        self.layers = check_layers(self.method, self.layers)


class AdapterLinear(nn.Module):
    """A frozen `nn.Linear` (`self.base`) plus a trainable update ΔW that can be merged into it and taken out again."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.merged = False
        # The untouched pretrained weight while merged; a buffer so that .to()/.cuda() move it with the model.
        self.register_buffer("pretrained_weight", None, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen pretrained weight W (also while merged)."""
        return self.pretrained_weight if self.merged else self.base.weight

    def delta_weight(self) -> torch.Tensor:
        """ΔW of shape (d_out, d_in) as used at inference (no dropout)."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.merged else self.adapted_forward(x)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = self.base.weight
        delta = self.delta_weight().to(weight.dtype)
        self.pretrained_weight = weight.data
        weight.data = weight.data + delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight.data = self.pretrained_weight  # the very tensor we kept: bit-identical
        self.pretrained_weight = None
        self.merged = False


class RowSlice(nn.Module):
    """The q, k or v rows of a fused linear layer, seen as a linear layer of its own (no tensors of its own).

    `weight` and `bias` are read at call time from the fused layer's frozen tensors (its pretrained weight while the
    owning `SlicedLinear` is merged), so a method wraps it like any `nn.Linear`.
    """

    def __init__(self, fused: nn.Linear, part: str) -> None:
        super().__init__()
        self.part = part
        self.in_features = fused.in_features
        self.out_features = fused.out_features // len(QKV)
        index = QKV.index(part)
        self.rows = slice(index * self.out_features, (index + 1) * self.out_features)
        object.__setattr__(self, "_fused", fused)  # not a submodule: the fused layer belongs to its SlicedLinear
        object.__setattr__(self, "_owner", None)

    @property
    def weight(self) -> torch.Tensor:
        source = self._owner.weight if self._owner is not None else self._fused.weight
        return source[self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self._fused.bias
        return None if bias is None else bias[self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"part={self.part}, rows={self.rows.start}:{self.rows.stop}, in_features={self.in_features}"


class SlicedLinear(AdapterLinear):
    """A fused q/k/v projection whose q, k and/or v rows each carry an adapter; ΔW is zero in the other rows."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base)
        self.slices = nn.ModuleDict()

    def add_slice(self, part: str, adapter: AdapterLinear) -> None:
        if part in self.slices:
            raise ValueError(f"slice {part!r} of this layer already carries an adapter")
        if adapter.base._fused is not self.base:
            raise ValueError(f"the adapter of slice {part!r} wraps the rows of another layer")
        object.__setattr__(adapter.base, "_owner", self)
        self.slices[part] = adapter

    def delta_weight(self) -> torch.Tensor:
        delta = torch.zeros_like(self.weight)
        for adapter in self.slices.values():
            delta[adapter.base.rows] = adapter.delta_weight()
        return delta

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.base.weight, self.base.bias
        size = self.base.out_features // len(QKV)
        parts = []
        for i, part in enumerate(QKV):
            if part in self.slices:
                parts.append(self.slices[part](x))
            else:
                rows = slice(i * size, (i + 1) * size)
                parts.append(F.linear(x, weight[rows], None if bias is None else bias[rows]))
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return f"slices={list(self.slices)}, merged={self.merged}"


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to (`blocks.<i>.`), or None."""
    match = _BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def parse_target(pattern: str) -> tuple[str, tuple[str, ...]]:
    """Split `attn.qkv[q,v]` into the module pattern and its q/k/v slices (none: the whole layer)."""
    match = _SLICES.match(pattern)
    if match is None or not (set(match.group(2)) <= set("qkv ,") or "," in match.group(2)):
        return pattern, ()  # a glob such as `mlp.fc[12]`; a list with a comma is meant as slices
    names = tuple(s.strip() for s in match.group(2).split(","))
    bad = [s for s in names if s not in QKV]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"target {pattern!r}: slices must be distinct names among {list(QKV)}, got {list(names)}")
    return match.group(1), tuple(s for s in QKV if s in names)


def find_linear_targets(
    model: nn.Module, targets: Sequence[str], layers: Sequence[int] | None = None
) -> list[tuple[str, nn.Module]]:
    """The `nn.Linear` modules matched by `targets` (in model order), restricted to `layers` when given.

    A target with q/k/v slices (`attn.qkv[q]`, `attn.qkv[q,v]`) selects rows of a fused (3d, d_in) projection: it
    yields one `RowSlice` per slice, named `<module>[q]`, which a method wraps like any linear layer and installs with
    `replace_module`; the fused layer then becomes a `SlicedLinear` whose ΔW is zero outside those rows. On attention
    whose q, k and v are separate layers (`q_proj`, `k_proj`, `v_proj`), `attn.qkv` selects the three and
    `attn.qkv[q,v]` the `q_proj` and `v_proj` layers.

    Raises:
        ValueError: a pattern matches nothing, a layer index is not a block of the model, a sliced layer's output
            is not divisible by 3, or a layer is targeted both whole and by slices.
        TypeError: a plain (non-glob) pattern matches a module that is not an `nn.Linear`.
    """
    modules = dict(model.named_modules())
    if layers is not None:
        present = {i for i in (block_index(n) for n in modules) if i is not None}
        missing = sorted(set(layers) - present)
        if missing:
            raise ValueError(
                f"layers {missing} are not blocks of this model (it has blocks 0..{max(present, default=-1)})"
            )
    found: dict[str, nn.Linear] = {}
    slices: dict[str, set[str]] = {}
    for target in targets:
        pattern, wanted = parse_target(target)
        hits = [n for n in modules if n and _matches(n, pattern) and (layers is None or block_index(n) in set(layers))]
        if any(c in pattern for c in "*?["):  # a glob selects broadly: keep the linear layers it reaches
            hits = [n for n in hits if isinstance(modules[n], nn.Linear)]
        if not hits:
            hits = [n for n in _unfused_qkv(modules, pattern, wanted) if layers is None or block_index(n) in layers]
            wanted = ()  # each of q_proj, k_proj, v_proj is a layer of its own
        if not hits:
            examples = sorted({n.split(".", 2)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
            raise ValueError(f"target {pattern!r} matches no module of the model; its linear layers include {examples}")
        for name in hits:
            module = modules[name]
            if not isinstance(module, nn.Linear):
                raise TypeError(f"target {pattern!r} matches {name!r}, a {type(module).__name__}; expected nn.Linear")
            if wanted and module.out_features % len(QKV):
                raise ValueError(f"target {target!r}: {name!r} has {module.out_features} outputs, not 3 equal slices")
            if (name in slices) != bool(wanted) and name in found:
                raise ValueError(f"target {target!r}: {name!r} is targeted both whole and by q/k/v slices")
            found[name] = module
            if wanted:
                slices.setdefault(name, set()).update(wanted)
    result: list[tuple[str, nn.Module]] = []
    for name in (n for n in modules if n in found):
        if name in slices:
            result += [(f"{name}[{s}]", RowSlice(found[name], s)) for s in QKV if s in slices[name]]
        else:
            result.append((name, found[name]))
    return result


def _unfused_qkv(modules: dict[str, nn.Module], pattern: str, wanted: tuple[str, ...]) -> list[str]:
    """`attn.qkv` (or `attn.qkv[q,v]`) on attention that keeps q, k and v apart (timm's `q_proj`, `k_proj`, `v_proj`,
    e.g. EVA-02 base and up): those projections, whole."""
    parent, _, last = pattern.rpartition(".")
    if last != "qkv":
        return []
    parts = wanted or QKV
    owners = [n for n in modules if n and (not parent or _matches(n, parent))]
    return [f"{n}.{p}_proj" for n in owners if all(f"{n}.{q}_proj" in modules for q in QKV) for p in parts]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at `name`; a slice name (`blocks.0.attn.qkv[q]`) puts it into that layer's `SlicedLinear`."""
    module_name, _, part = name.partition("[")
    parent_name, _, child = module_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if not part:
        setattr(parent, child, new)
        return
    if not isinstance(new, AdapterLinear) or not isinstance(new.base, RowSlice):
        raise TypeError(f"{name}: a q/k/v slice takes an AdapterLinear around its RowSlice, got {type(new).__name__}")
    fused = getattr(parent, child)
    if not isinstance(fused, SlicedLinear):
        fused = SlicedLinear(fused)
        setattr(parent, child, fused)
    fused.add_slice(part.rstrip("]"), new)


def heads(model: nn.Module) -> tuple[nn.Module, ...]:
    """The classification head(s) of a timm model (`get_classifier()`): one, or two for a distilled DeiT (`head`,
    `head_dist`, whose logits timm averages outside distillation training)."""
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"{type(model).__name__} has no get_classifier(): expected a timm model")
    found = model.get_classifier()
    return tuple(found) if isinstance(found, (tuple, list)) else (found,)


def method_config(model: nn.Module) -> MethodConfig | None:
    """The config the model was injected with, or None for a plain backbone."""
    return getattr(model, CONFIG_ATTR, None)


def inject(model: nn.Module, config: MethodConfig, check: bool = True) -> nn.Module:
    """Freeze the backbone, insert the method described by `config` and leave the head(s) trainable.

    The model is edited in place and returned. With `check` (the default), a dry forward and backward pass on one
    input of the model's size proves that every trainable tensor takes part in the output (`require_participation`):
    an adapter the model bypasses is an error naming it, never a run that silently trains a linear probe.

    Raises:
        ValueError: the model already carries a method, or an adapter takes no part in the output.
    """
    existing = method_config(model)
    if existing is not None:
        raise ValueError(f"the model already carries a {existing.method!r} method; inject into a fresh backbone")
    found = heads(model)
    training = model.training
    model.requires_grad_(False)
    config.apply(model)
    route_adapted_qkv(model)
    model.train(training)  # new modules (dropout) follow the model's mode
    for head in found:
        head.requires_grad_(True)
    if check:
        require_participation(model, config.method)
    setattr(model, CONFIG_ATTR, config)
    return model


def adapter_layers(model: nn.Module) -> Iterable[AdapterLinear]:
    """The layers that merge: slice adapters inside a `SlicedLinear` merge through it."""
    return (m for m in model.modules() if isinstance(m, AdapterLinear) and not isinstance(m.base, RowSlice))


def _require_mergeable(model: nn.Module) -> None:
    config = method_config(model)
    if config is None:
        raise ValueError("the model carries no method: call inject() first")
    if not config.mergeable:
        raise ValueError(f"{config.method!r} adds tokens, not a weight update: it cannot be merged into the backbone")


def merge(model: nn.Module) -> nn.Module:
    """Fold every weight update into the frozen weights, for inference at the plain backbone's cost."""
    _require_mergeable(model)
    method_config(model).merge_model(model)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`: the frozen weights become bit-identical to the pretrained ones again."""
    _require_mergeable(model)
    method_config(model).unmerge_model(model)
    return model


def trainable_parameters(model: nn.Module, exclude_head: bool = False) -> dict[str, nn.Parameter]:
    """Trainable parameters by name, each shared tensor once (under its first name)."""
    head = {id(p) for h in heads(model) for p in h.parameters()} if exclude_head else set()
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in head}


def count_trainable(model: nn.Module, exclude_head: bool = True) -> int:
    """Number of trainable parameters, shared tensors counted once; the paper's tables exclude the head."""
    return sum(p.numel() for p in trainable_parameters(model, exclude_head).values())
