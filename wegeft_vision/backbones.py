"""timm backbones: creation by name and pretrained tag, and the data settings stored with their weights.

Knows nothing of adapters; `methods` edits what this returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.data import resolve_model_data_config
from torch import nn

# The authors' choice for the vision experiments (ImageNet-21k, AugReg); `vit_base_patch16_224.orig_in21k` is the
# original ViT-B/16 checkpoint behind VPT/NOAH-style numbers.
DEFAULT_BACKBONE = "vit_base_patch16_224.augreg_in21k"


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    num_classes: int = 1000,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """A timm model `name` (`architecture[.tag]`) with a fresh `num_classes`-way head.

    Args:
        name: timm model name, optionally with a pretrained tag.
        num_classes: size of the classification head (a pretrained head of another size is dropped).
        pretrained: load the tag's weights from the Hugging Face cache, or the hub when reachable.
        weights: a local weights file (safetensors or a PyTorch state dict) to load instead of the hub's.
        overrides: architecture arguments passed to timm (e.g. `img_size`, `depth` for tiny test models).

    Raises:
        ValueError: unknown model name, or a weights file that does not fit the architecture.
        FileNotFoundError: a missing weights file, or pretrained weights neither cached nor reachable.
    """
    if name.split(".")[0] not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        try:
            overlay = {"file": str(weights)}
            return timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **overrides
            )
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"weights file {weights} does not fit {name}: {err}") from err
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **overrides)
    except OSError as err:
        raise FileNotFoundError(
            f"pretrained weights of {name} are neither in the Hugging Face cache nor reachable ({type(err).__name__}); "
            "fetch them once where the hub is reachable, or pass a local file with weights=PATH (--weights)"
        ) from err


def backbone_tag(model: nn.Module) -> str:
    """`architecture.tag` of a timm model, as recorded in results and adapter files."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture", type(model).__name__), cfg.get("tag")
    return f"{arch}.{tag}" if tag else arch


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input size, interpolation, mean and std stored with the model's pretrained weights.

    The input size is the model's own (`patch_embed.img_size`) when it was built with another `img_size`.
    """
    config = resolve_model_data_config(model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], *img_size)
    return config
