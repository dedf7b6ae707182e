"""Parameter-efficient methods for timm ViTs: WeGeFT and the baselines of the paper's vision tables."""

from .adapter_file import load_adapted_model, load_adapter, read_adapter_meta, save_adapter
from .base import (
    AdapterLinear,
    MethodConfig,
    count_trainable,
    heads,
    inject,
    merge,
    method_config,
    trainable_parameters,
    unmerge,
)
from .bitfit import BitFitConfig
from .catalogue import VARIANTS, Variant, parameter_table, variants
from .fact import FacTLinear, FacTTKConfig, FacTTTConfig
from .g_theta import GThetaSpec
from .genft import GenFTConfig, GenFTGenerator, GenFTLinear
from .hf_peft import HFPeftConfig
from .lora import LoRAConfig, LoRALinear, SharedLoRAConfig
from .paca import PaCaAttention, PaCaAttnBlock, PaCaBlock
from .participation import require_participation
from .probe import FullFinetuneConfig, LinearProbeConfig
from .registry import METHODS, config_from_dict, config_from_spec, config_from_yaml
from .vpt import PromptedBlock, VPTConfig
from .wegeft import G_THETA, WeGeFTConfig, WeGeFTLinear, WeGeFTProjections

__all__ = [
    "G_THETA",
    "METHODS",
    "VARIANTS",
    "AdapterLinear",
    "BitFitConfig",
    "FacTLinear",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullFinetuneConfig",
    "GThetaSpec",
    "GenFTConfig",
    "GenFTGenerator",
    "GenFTLinear",
    "HFPeftConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "LoRALinear",
    "MethodConfig",
    "PaCaAttention",
    "PaCaAttnBlock",
    "PaCaBlock",
    "PromptedBlock",
    "SharedLoRAConfig",
    "VPTConfig",
    "Variant",
    "WeGeFTConfig",
    "WeGeFTLinear",
    "WeGeFTProjections",
    "config_from_dict",
    "config_from_spec",
    "config_from_yaml",
    "count_trainable",
    "heads",
    "inject",
    "load_adapted_model",
    "load_adapter",
    "merge",
    "method_config",
    "parameter_table",
    "read_adapter_meta",
    "require_participation",
    "save_adapter",
    "trainable_parameters",
    "unmerge",
    "variants",
]
