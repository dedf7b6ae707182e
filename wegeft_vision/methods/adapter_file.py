"""Adapters on disk: a safetensors file of the trainable tensors (method + head) and a JSON sidecar beside it.

The sidecar (`<name>.json`) records the method config, the backbone (timm architecture, pretrained tag and where its
weights came from: hub, shipped with this package, a local file with its sha256, or random init with its seed) and the
class count, so that `load_adapted_model` can rebuild the very same adapted model, touching the network only for a hub
source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .base import inject, method_config, trainable_parameters
from .registry import config_from_dict

FORMAT = "wegeft-vision-adapter"
FORMAT_VERSION = 1


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def backbone_info(model: nn.Module) -> dict[str, Any]:
    """What identifies the backbone: timm architecture, pretrained tag, weights source and class count."""
    from ..backbones import weights_source  # backbones knows nothing of adapters; the dependency points this way

    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "architecture": cfg.get("architecture"),
        "tag": cfg.get("tag"),
        "weights": weights_source(model),
        "num_classes": int(getattr(model, "num_classes", 0)),
    }


def save_adapter(
    model: nn.Module,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    backbone_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write the trainable tensors of an injected model to `path` (.safetensors) and its JSON sidecar.

    Args:
        model: a model returned by `inject`.
        path: target file; the sidecar goes beside it with the suffix `.json`.
        extra: JSON-ready metadata kept in the sidecar (e.g. training preset, seed).
        backbone_overrides: timm architecture arguments the backbone was created with (e.g. `img_size`), so that
            `load_adapted_model` can create it again.

    Returns:
        The path of the tensor file.
    """
    config = method_config(model)
    if config is None:
        raise ValueError("save_adapter: the model carries no method; call inject() first")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_adapter: {path} should end in .safetensors")
    tensors = {name: p.detach().cpu().contiguous() for name, p in trainable_parameters(model).items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "backbone": {**backbone_info(model), "overrides": backbone_overrides or {}},
        "tensors": sorted(tensors),
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "wegeft_vision": FORMAT})
    sidecar_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of the adapter at `path`, validated."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    if not side.is_file():
        raise FileNotFoundError(f"adapter sidecar {side} does not exist (it is written beside {Path(path).name})")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"adapter sidecar {side} is not valid JSON: {err}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{side} is not a wegeft-vision adapter sidecar (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{side} has format version {meta['format_version']}; this version reads {FORMAT_VERSION}")
    return meta


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Put the adapter at `path` onto `model`: a fresh backbone (injected here) or one injected with the same config.

    The head is resized to the adapter's class count when needed. Every tensor in the file must land on a
    trainable parameter of the same shape, and every trainable parameter must be in the file.
    """
    meta = read_adapter_meta(path)
    config = config_from_dict(meta["config"])
    saved = meta["backbone"]
    here = backbone_info(model)
    if saved.get("architecture") and here["architecture"] and saved["architecture"] != here["architecture"]:
        raise ValueError(
            f"adapter {path} was trained on {saved['architecture']!r}, not on this {here['architecture']!r} backbone"
        )
    current = method_config(model)
    if current is None:
        if here["num_classes"] != saved["num_classes"]:
            model.reset_classifier(saved["num_classes"])
        inject(model, config)
    elif current != config:
        raise ValueError(f"the model carries {current}, but adapter {path} holds {config}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"adapter file {path} is not a readable safetensors file: {err}") from err
    params = trainable_parameters(model)
    unexpected = sorted(set(tensors) - set(params))
    missing = sorted(set(params) - set(tensors))
    if unexpected or missing:
        raise ValueError(f"adapter {path} does not fit the model: unexpected {unexpected}, missing {missing}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            param = params[name]
            if param.shape != tensor.shape:
                raise ValueError(
                    f"adapter {path}: {name} has shape {tuple(tensor.shape)}, model has {tuple(param.shape)}"
                )
            param.copy_(tensor)
    return model


def load_adapted_model(
    path: str | Path, weights: str | Path | None = None, pretrained: bool = True, **overrides: Any
) -> nn.Module:
    """Create the backbone recorded in the adapter's sidecar and put the adapter on it, in eval mode.

    The backbone's weights come from where the sidecar says they came from (see `backbones.create_from_source`):
    only a hub source touches the network; a recorded local file or the shipped weights must still have their sha256.

    Args:
        path: the adapter (.safetensors) with its sidecar.
        weights: a local backbone weights file to use instead of the recorded source.
        pretrained: for a sidecar that records no source (older files): load the tag's pretrained weights.
        overrides: architecture arguments that replace the recorded ones.
    """
    from ..backbones import create_backbone, create_from_source

    meta = read_adapter_meta(path)
    saved = meta["backbone"]
    if not saved.get("architecture"):
        raise ValueError(f"adapter {path} does not record its backbone architecture")
    name = saved["architecture"] + (f".{saved['tag']}" if saved.get("tag") else "")
    options = {"num_classes": saved["num_classes"], **saved.get("overrides", {}), **overrides}
    if saved.get("weights") and weights is None:
        try:
            model = create_from_source(name, saved["weights"], **options)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"adapter {path}: {err}") from err
    else:
        model = create_backbone(name, pretrained=pretrained and weights is None, weights=weights, **options)
    return load_adapter(model, path).eval()
