"""The known methods by name, and configs to and from plain dicts (the JSON sidecar, YAML configs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import MethodConfig
from .bitfit import BitFitConfig
from .lora import LoRAConfig
from .probe import FullFinetuneConfig, LinearProbeConfig
from .vpt import VPTConfig
from .wegeft import WeGeFTConfig

METHODS: dict[str, type[MethodConfig]] = {
    cls.method: cls
    for cls in (WeGeFTConfig, LoRAConfig, BitFitConfig, VPTConfig, LinearProbeConfig, FullFinetuneConfig)
}


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Build a method config from `{"method": name, **fields}`; unknown names or fields are errors."""
    data = dict(data)
    name = data.pop("method", None)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; known: {sorted(fields)}")
    return cls(**data)
