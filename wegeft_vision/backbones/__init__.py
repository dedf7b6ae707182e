"""Backbones: timm models by `architecture[.tag]`, the record of where their weights came from, the shipped mini-ViT.

Importing this package registers the shipped mini-ViT (`vit_mini_patch8_32.procedural`) with timm.
"""

from . import mini_vit
from .create import (
    DEFAULT_BACKBONE,
    backbone_tag,
    create_backbone,
    create_from_source,
    data_config,
    describe_source,
    weights_source,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "backbone_tag",
    "create_backbone",
    "create_from_source",
    "data_config",
    "describe_source",
    "mini_vit",
    "weights_source",
]
