"""wegeft-vision: WeGeFT (weight-generative fine-tuning) and its baselines for timm Vision Transformers."""

from .backbones import DEFAULT_BACKBONE, backbone_tag, create_backbone, data_config
from .methods import (
    BitFitConfig,
    FacTTKConfig,
    FacTTTConfig,
    FullFinetuneConfig,
    GenFTConfig,
    LinearProbeConfig,
    LoRAConfig,
    MethodConfig,
    PeftConfig,
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

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BACKBONE",
    "BitFitConfig",
    "FacTTKConfig",
    "FacTTTConfig",
    "FullFinetuneConfig",
    "GenFTConfig",
    "LinearProbeConfig",
    "LoRAConfig",
    "MethodConfig",
    "PeftConfig",
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
