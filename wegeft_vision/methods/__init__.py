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
from .fact import FacTLinear, FacTTKConfig, FacTTTConfig
from .generators import GeneratorSpec
from .genft import GenFTConfig, GenFTGenerator, GenFTLinear
from .hf_peft import PeftConfig
from .lora import LoRAConfig, LoRALinear, SharedLoRAConfig
from .paca import PaCaAttention, PaCaAttnBlock, PaCaBlock
from .probe import FullFinetuneConfig, LinearProbeConfig
from .registry import METHODS, config_from_dict, config_from_spec, config_from_yaml
from .vpt import PromptedBlock, VPTConfig
from .wegeft import WeGeFTConfig, WeGeFTGenerator, WeGeFTLinear

__all__ = [
    "METHODS",
    "AdapterLinear",
    "BitFitConfig",
    "FacTLinear",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullFinetuneConfig",
    "GenFTConfig",
    "GenFTGenerator",
    "GenFTLinear",
    "GeneratorSpec",
    "LinearProbeConfig",
    "LoRAConfig",
    "LoRALinear",
    "MethodConfig",
    "PeftConfig",
    "PaCaAttention",
    "PaCaAttnBlock",
    "PaCaBlock",
    "PromptedBlock",
    "SharedLoRAConfig",
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
