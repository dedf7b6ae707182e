"""Parameter-efficient methods for timm ViTs: WeGeFT and the baselines of the paper's vision tables."""

from .adapter_file import load_adapted_model, load_adapter, read_adapter_meta, save_adapter
from .base import (
    AdapterLinear,
    MethodConfig,
    count_trainable,
    inject,
    merge,
    method_config,
    trainable_parameters,
    unmerge,
)
from .bitfit import BitFitConfig
from .lora import LoRAConfig, LoRALinear
from .probe import FullFinetuneConfig, LinearProbeConfig
from .registry import METHODS, config_from_dict, config_from_spec, config_from_yaml
from .vpt import PromptedBlock, VPTConfig
from .wegeft import WeGeFTConfig, WeGeFTGenerator, WeGeFTLinear

__all__ = [
    "METHODS",
    "AdapterLinear",
    "BitFitConfig",
    "FullFinetuneConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "LoRALinear",
    "MethodConfig",
    "PromptedBlock",
    "VPTConfig",
    "WeGeFTConfig",
    "WeGeFTGenerator",
    "WeGeFTLinear",
    "config_from_dict",
    "config_from_spec",
    "config_from_yaml",
    "count_trainable",
    "inject",
    "load_adapted_model",
    "load_adapter",
    "merge",
    "method_config",
    "read_adapter_meta",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
]
