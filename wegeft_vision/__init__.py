"""wegeft-vision: WeGeFT (weight-generative fine-tuning) and its baselines for timm Vision Transformers.

The public names below load on first use, so `import wegeft_vision` (and the `wegeft-vision` command's start-up) does
not import torch or timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backbones import DEFAULT_BACKBONE, backbone_tag, create_backbone, data_config
    from .methods import (
        BitFitConfig,
        FacTTKConfig,
        FacTTTConfig,
        FullFinetuneConfig,
        GenFTConfig,
        HFPeftConfig,
        LinearProbeConfig,
        LoRAConfig,
        MethodConfig,
        SharedLoRAConfig,
        VPTConfig,
        WeGeFTConfig,
        config_from_dict,
        count_trainable,
        inject,
        load_adapted_model,
        load_adapter,
        merge,
        save_adapter,
        unmerge,
    )
    from .viz import cluster_heatmaps

    __version__: str

__all__ = [
    "DEFAULT_BACKBONE",
    "BitFitConfig",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullFinetuneConfig",
    "GenFTConfig",
    "HFPeftConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "MethodConfig",
    "SharedLoRAConfig",
    "VPTConfig",
    "WeGeFTConfig",
    "backbone_tag",
    "cluster_heatmaps",
    "config_from_dict",
    "count_trainable",
    "create_backbone",
    "data_config",
    "inject",
    "load_adapted_model",
    "load_adapter",
    "merge",
    "save_adapter",
    "unmerge",
]
# The sub-package each public name comes from, when not `methods`.
_SOURCE = dict.fromkeys(("DEFAULT_BACKBONE", "backbone_tag", "create_backbone", "data_config"), "backbones")
_SOURCE["cluster_heatmaps"] = "viz"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        value = version("wegeft-vision")  # the installed distribution's, so it never disagrees with pyproject.toml
    elif name in __all__:
        value = getattr(importlib.import_module(f".{_SOURCE.get(name, 'methods')}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
