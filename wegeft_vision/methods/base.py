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
from torch import nn

CONFIG_ATTR = "peft_config"
_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")


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


@dataclasses.dataclass
class TargetedConfig(MethodConfig):
    """A method that wraps linear layers chosen by name.

    Args:
        targets: module-name patterns; a pattern matches a name it equals or ends with (after a dot), or a glob
            (`blocks.*.attn.*`) that selects the linear layers it matches.
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
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)


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


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to (`blocks.<i>.`), or None."""
    match = _BLOCK_INDEX.search(name)
    return int(match.group(1)) if match else None


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def find_linear_targets(
    model: nn.Module, targets: Sequence[str], layers: Sequence[int] | None = None
) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` modules matched by `targets` (in model order), restricted to `layers` when given.

    Raises:
        ValueError: a pattern matches nothing, or a layer index is not a block of the model.
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
    for pattern in targets:
        hits = [n for n in modules if n and _matches(n, pattern) and (layers is None or block_index(n) in set(layers))]
        if any(c in pattern for c in "*?["):  # a glob selects broadly: keep the linear layers it reaches
            hits = [n for n in hits if isinstance(modules[n], nn.Linear)]
        if not hits:
            examples = sorted({n.split(".", 2)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
            raise ValueError(f"target {pattern!r} matches no module of the model; its linear layers include {examples}")
        for name in hits:
            module = modules[name]
            if not isinstance(module, nn.Linear):
                raise TypeError(f"target {pattern!r} matches {name!r}, a {type(module).__name__}; expected nn.Linear")
            found[name] = module
    return [(n, found[n]) for n in modules if n in found]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def classifier(model: nn.Module) -> nn.Module:
    """The classification head of a timm model (`get_classifier()`)."""
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"{type(model).__name__} has no get_classifier(): expected a timm model")
    return model.get_classifier()


def method_config(model: nn.Module) -> MethodConfig | None:
    """The config the model was injected with, or None for a plain backbone."""
    return getattr(model, CONFIG_ATTR, None)


def inject(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Freeze the backbone, insert the method described by `config` and leave the head trainable.

    The model is edited in place and returned.
    """
    existing = method_config(model)
    if existing is not None:
        raise ValueError(f"the model already carries a {existing.method!r} method; inject into a fresh backbone")
    head = classifier(model)
    model.requires_grad_(False)
    config.apply(model)
    head.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    return model


def adapter_layers(model: nn.Module) -> Iterable[AdapterLinear]:
    return (m for m in model.modules() if isinstance(m, AdapterLinear))


def _require_mergeable(model: nn.Module) -> None:
    config = method_config(model)
    if config is None:
        raise ValueError("the model carries no method: call inject() first")
    if not config.mergeable:
        raise ValueError(f"{config.method!r} adds tokens, not a weight update: it cannot be merged into the backbone")


def merge(model: nn.Module) -> nn.Module:
    """Fold every weight update into the frozen weights, for inference at the plain backbone's cost."""
    _require_mergeable(model)
    for layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge`: the frozen weights become bit-identical to the pretrained ones again."""
    _require_mergeable(model)
    for layer in adapter_layers(model):
        layer.unmerge()
    return model


def trainable_parameters(model: nn.Module, exclude_head: bool = False) -> dict[str, nn.Parameter]:
    """Trainable parameters by name, each shared tensor once (under its first name)."""
    head = {id(p) for p in classifier(model).parameters()} if exclude_head else set()
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in head}


def count_trainable(model: nn.Module, exclude_head: bool = True) -> int:
    """Number of trainable parameters, shared tensors counted once; the paper's tables exclude the head."""
    return sum(p.numel() for p in trainable_parameters(model, exclude_head).values())
