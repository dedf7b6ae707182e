"""The known methods by name, and configs to and from plain dicts (the JSON sidecar, YAML configs).

Former option and class names (`legacy.py`) are read as today's, so files written by earlier versions still load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from .base import MethodConfig
from .bitfit import BitFitConfig
from .fact import FacTTKConfig, FacTTTConfig
from .genft import GenFTConfig
from .hf_peft import HFPeftConfig
from .legacy import RENAMED_CLASSES, current_options
from .lora import LoRAConfig, SharedLoRAConfig
from .probe import FullFinetuneConfig, LinearProbeConfig
from .vpt import VPTConfig
from .wegeft import WeGeFTConfig

METHODS: dict[str, type[MethodConfig]] = {
    cls.method: cls
    for cls in (WeGeFTConfig, LoRAConfig, BitFitConfig, VPTConfig, LinearProbeConfig, FullFinetuneConfig)
}
# The methods compared with WeGeFT under the same recipe.
METHODS.update({cls.method: cls for cls in (SharedLoRAConfig, GenFTConfig, FacTTTConfig, FacTTKConfig, HFPeftConfig)})


def config_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Build a method config from `{"method": name, **fields}`; unknown names or fields are errors, former field names
    (`legacy.RENAMED_OPTIONS`) are read as today's."""
    data = dict(data)
    name = data.pop("method", None)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    cls = METHODS[name]
    data = current_options(name, data)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; known: {sorted(fields)}")
    return cls(**data)


def config_from_spec(data: dict[str, Any], source: str = "method config") -> MethodConfig:
    """Build a method config from either `{"method": name, **options}` or `{"class_path": ..., "init_args": {...}}`.

    Args:
        data: the mapping, e.g. a parsed YAML preset or a LightningCLI argument.
        source: what to name in error messages (a file path, an option).
    """
    if "class_path" not in data:
        return config_from_dict(data)
    by_class = {cls.__name__: cls for cls in METHODS.values()}
    class_name = str(data["class_path"]).rsplit(".", 1)[-1]
    class_name = RENAMED_CLASSES.get(class_name, class_name)
    if class_name not in by_class:
        raise ValueError(f"{source}: unknown class_path {data['class_path']!r}; known: {sorted(by_class)}")
    init_args = data.get("init_args") or {}
    unknown = sorted(set(data) - {"class_path", "init_args", "__path__"})  # jsonargparse notes the file it read
    if unknown or not isinstance(init_args, dict):  # a misspelt `init_args` would leave every default in place
        what = f"unknown key(s) {unknown}" if unknown else f"init_args should be a mapping, got {init_args!r}"
        raise ValueError(f"{source}: {what}; expected `class_path` and `init_args`")
    try:
        return config_from_dict({"method": by_class[class_name].method, **init_args})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err


def config_from_yaml(path: str | Path) -> MethodConfig:
    """Read a method preset (`class_path` + `init_args`, the LightningCLI form) such as `configs/method/*.yaml`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"method config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"method config {path} needs a `class_path` (and optional `init_args`)")
    return config_from_spec(data, f"method config {path}")
