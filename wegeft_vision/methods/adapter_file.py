"""Adapters on disk: a safetensors file of the trainable tensors (method + head) and a JSON sidecar beside it.

The sidecar (`<name>.json`) records the method config, the backbone (timm architecture, pretrained tag and where its
weights came from: hub, shipped with this package, a local file with its sha256, or random init with its seed) and the
class count, so that `load_adapted_model` can rebuild the very same adapted model, touching the network only for a hub
source.

Both files are untrusted input when loaded: the sidecar is checked key by key (`format_version`: every sidecar this
project has written carries one, so a sidecar without one is refused; version 1 files name WeGeFT's parts as before
their renaming, and are read with today's names, see `legacy.py`) and the tensors must be exactly the trainable
tensors of the rebuilt model, with their shapes, a compatible dtype and finite values.
Every refusal is a `ValueError` (or `FileNotFoundError`) naming the file and the key or tensor; nothing is written.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_path
from .base import MethodConfig, heads, inject, method_config, trainable_parameters
from .legacy import current_tensor_name
from .registry import config_from_dict

FORMAT = "wegeft-vision-adapter"
FORMAT_VERSION = 2  # 2: WeGeFT's `projections` and `g_theta` (1: `generator`, `g`)

_KEYS = ("format", "format_version", "config", "backbone", "tensors", "extra")
_BACKBONE_KEYS = ("architecture", "tag", "num_classes")
_BACKBONE_OPTIONAL = ("weights", "overrides")  # absent from sidecars written before the weights source was recorded
# Weights sources (see `backbones.weights_source`): kind -> {field: (type, required)}; a hub source's fields only
# inform (the tag decides what is loaded).
_SOURCES: dict[str, dict[str, tuple[type, bool]]] = {
    "hub": {"hf_hub_id": (object, False), "url": (object, False)},
    "shipped": {"file": (str, True), "sha256": (str, True)},
    "file": {"path": (str, True), "sha256": (str, True)},
    "random": {"seed": (int, True)},
}
# `create_backbone` arguments set by the other keys (or by the caller): a recorded override may not replace them.
_RESERVED_OVERRIDES = ("num_classes", "pretrained", "weights", "init_seed")


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

    Each file is written beside its final name and moved over it, so an adapter already there is replaced whole or
    not at all.

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
    with atomic_path(sidecar_path(path)) as side, atomic_path(path) as partial:  # both written, then both moved
        save_file(tensors, str(partial), metadata={"format": "pt", "wegeft_vision": FORMAT})
        side.write_text(json.dumps(meta, indent=2) + "\n")
    return path


# --- reading: the sidecar ----------------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    names = {bool: "boolean", dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Sidecar:
    """Checks of one sidecar's values; each refusal names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"adapter sidecar {self.path}: key '{key}' {problem}")

    def expect(self, key: str, value: Any, ok: bool, expected: str) -> None:
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise self.error(key, f"should be {expected}, got {shown} ({_json_type(value)})")

    def keys(self, where: str, data: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        prefix = f"{where}." if where else ""
        missing = [prefix + k for k in required if k not in data]
        if missing:
            raise ValueError(f"adapter sidecar {self.path}: missing key(s) {missing}")
        unknown = sorted(prefix + str(k) for k in data if k not in required + optional)
        if unknown:
            raise ValueError(
                f"adapter sidecar {self.path}: unknown key(s) {unknown} (free-form metadata goes in 'extra')"
            )


def _check_source(side: _Sidecar, source: Any) -> None:
    side.expect("backbone.weights", source, source is None or isinstance(source, dict), "an object or null")
    if source is None:
        return
    kind = source.get("kind")
    side.expect("backbone.weights.kind", kind, isinstance(kind, str) and kind in _SOURCES, f"one of {sorted(_SOURCES)}")
    fields = _SOURCES[kind]
    required = tuple(k for k, (_, needed) in fields.items() if needed)
    side.keys("backbone.weights", source, ("kind", *required), tuple(k for k in fields if k not in required))
    for key, (kind_type, _) in fields.items():
        if key in source and kind_type is not object:
            value = source[key]
            ok = _is_int(value) if kind_type is int else isinstance(value, kind_type) and value != ""
            side.expect(f"backbone.weights.{key}", value, ok, "an integer" if kind_type is int else "a string")
    if "sha256" in source:
        digest = source["sha256"]
        side.expect("backbone.weights.sha256", digest, re.fullmatch("[0-9a-f]{64}", digest) is not None, "a sha256")
    if kind == "shipped":
        name = source["file"]
        side.expect("backbone.weights.file", name, Path(name).name == name and name not in (".", ".."), "a file name")


def _check_backbone(side: _Sidecar, backbone: Any) -> None:
    side.expect("backbone", backbone, isinstance(backbone, dict), "an object")
    side.keys("backbone", backbone, _BACKBONE_KEYS, _BACKBONE_OPTIONAL)
    for key in ("architecture", "tag"):
        value = backbone[key]
        side.expect(f"backbone.{key}", value, value is None or isinstance(value, str) and value != "", "a name or null")
    classes = backbone["num_classes"]
    side.expect("backbone.num_classes", classes, _is_int(classes) and classes >= 0, "a non-negative integer")
    _check_source(side, backbone.get("weights"))
    overrides = backbone.get("overrides", {})
    side.expect("backbone.overrides", overrides, isinstance(overrides, dict), "an object")
    reserved = sorted(set(overrides) & set(_RESERVED_OVERRIDES))
    if reserved:
        raise side.error("backbone.overrides", f"may not set {reserved}: they come from the other keys")


def _non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """The key and value of the first NaN or infinite number in `value` (JSON allows them), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((found for k, v in items if (found := _non_finite(v, f"{key}.{k}")) is not None), None)


def _check_config(side: _Sidecar, config: Any) -> MethodConfig:
    side.expect("config", config, isinstance(config, dict), "an object")
    method = config.get("method")
    side.expect("config.method", method, isinstance(method, str), "a method name")
    bad = _non_finite(config, "config")
    if bad:
        raise side.error(bad[0], f"should be a finite number, got {bad[1]}")
    try:
        return config_from_dict(config)
    except (ValueError, TypeError) as err:
        raise side.error("config", f"does not build a method config: {err}") from err


def _read_sidecar(path: str | Path) -> tuple[dict[str, Any], MethodConfig]:
    """The checked sidecar of the adapter at `path` and the method config it describes."""
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path} is an adapter sidecar: give the .safetensors file beside it")
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"adapter sidecar {side} does not exist (it is written beside {path.name})")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"adapter sidecar {side} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"adapter sidecar {side} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"adapter sidecar {side} should hold a JSON object, not a JSON {_json_type(meta)}")
    check = _Sidecar(side)
    if meta.get("format") != FORMAT:
        raise check.error("format", f"should be {FORMAT!r}, got {meta.get('format')!r}: not a wegeft-vision sidecar")
    if "format_version" not in meta:
        raise ValueError(f"adapter sidecar {side} has no 'format_version' (every sidecar wegeft-vision writes has one)")
    version = meta["format_version"]
    check.expect("format_version", version, _is_int(version) and version >= 1, "a positive integer")
    if version > FORMAT_VERSION:
        raise check.error(
            "format_version", f"is {version}, from a newer wegeft-vision: this one reads version {FORMAT_VERSION}"
        )
    check.keys("", meta, _KEYS)
    config = _check_config(check, meta["config"])
    _check_backbone(check, meta["backbone"])
    names = meta["tensors"]
    ok = isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    check.expect("tensors", names, ok, "a list of distinct tensor names")
    check.expect("extra", meta["extra"], isinstance(meta["extra"], dict), "an object")
    return meta, config


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of the adapter at `path`, checked (keys, types, format version, the method config builds).

    Raises:
        FileNotFoundError: the adapter or its sidecar is missing.
        ValueError: a sidecar that is not JSON, not an object, of another format or a newer version, or with a
            missing, unknown or ill-typed key; the message names the file and the key.
    """
    return _read_sidecar(path)[0]


# --- reading: the tensors ----------------------------------------------------------------------------------------


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter file, all finite."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"adapter file {path} is not a readable safetensors file (truncated or not one): {err}"
        ) from err
    bad = sorted(n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise ValueError(f"adapter file {path}: tensor(s) {bad} hold NaN or infinite values")
    return tensors


def _difference(found: set[str], expected: set[str]) -> str:
    parts = [f"missing {sorted(expected - found)}", f"unexpected {sorted(found - expected)}"]
    return ", ".join(p for p in parts if not p.endswith("[]"))


def _check_head(model: nn.Module, tensors: dict[str, torch.Tensor], num_classes: int, path: Path) -> None:
    """The head tensors in the file have the class count of the sidecar (checked before the head is resized)."""
    found = {id(h) for h in heads(model)} if hasattr(model, "get_classifier") else set()
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in found)
    for name, tensor in sorted(tensors.items()):
        if prefixes and name.startswith(prefixes) and tensor.ndim >= 1 and tensor.shape[0] != num_classes:
            raise ValueError(
                f"adapter {path}: tensor {name} has {tensor.shape[0]} classes, its sidecar's 'backbone.num_classes' "
                f"is {num_classes}"
            )


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Put the adapter at `path` onto `model`: a fresh backbone (injected here) or one injected with the same config.

    The head is resized to the adapter's class count when needed. The file must hold exactly the trainable tensors of
    the model, each of its shape, of its dtype (a floating-point tensor may be of another precision: it is cast) and
    finite. Everything that can be checked without the model is checked before the model is touched; a fresh model
    refused after that is left injected but without the adapter's values (discard it).

    Raises:
        FileNotFoundError: the adapter or its sidecar is missing.
        ValueError: see `read_adapter_meta`; a file that is not safetensors; tensors missing, unexpected, of another
            shape, dtype or class count, or not finite; a model of another architecture, method or class count.
    """
    path = Path(path)
    meta, config = _read_sidecar(path)
    side, saved, here = sidecar_path(path), meta["backbone"], backbone_info(model)
    if saved["architecture"] and here["architecture"] and saved["architecture"] != here["architecture"]:
        raise ValueError(
            f"adapter {path} was trained on {saved['architecture']!r}, not on this {here['architecture']!r} backbone"
        )
    current = method_config(model)
    if current is not None and current != config:
        raise ValueError(f"the model carries {current}, but adapter {path} holds {config}")
    if current is not None and here["num_classes"] != saved["num_classes"]:
        raise ValueError(
            f"adapter {path} has {saved['num_classes']} classes ('backbone.num_classes' in {side}), "
            f"the model {here['num_classes']}"
        )
    tensors = _read_tensors(path)
    if set(tensors) != set(meta["tensors"]):
        difference = _difference(set(tensors), set(meta["tensors"]))
        raise ValueError(f"adapter {path} does not match its sidecar {side} (key 'tensors'): {difference}")
    tensors = {current_tensor_name(config.method, n, meta["format_version"]): t for n, t in tensors.items()}
    _check_head(model, tensors, saved["num_classes"], path)

    if current is None:
        if here["num_classes"] != saved["num_classes"]:
            model.reset_classifier(saved["num_classes"])
        try:
            inject(model, config)
        except (ValueError, TypeError) as err:
            raise ValueError(f"adapter sidecar {side}: key 'config' does not apply to this model: {err}") from err
    params = trainable_parameters(model)
    if set(tensors) != set(params):
        raise ValueError(f"adapter {path} does not fit the model: {_difference(set(tensors), set(params))}")
    for name, tensor in sorted(tensors.items()):
        param = params[name]
        if param.shape != tensor.shape:
            raise ValueError(f"adapter {path}: {name} has shape {tuple(tensor.shape)}, model has {tuple(param.shape)}")
        if tensor.dtype != param.dtype and not (tensor.is_floating_point() and param.is_floating_point()):
            raise ValueError(f"adapter {path}: {name} has dtype {tensor.dtype}, model has {param.dtype}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
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
    import timm

    from ..backbones import create_backbone, create_from_source

    meta, _ = _read_sidecar(path)
    side, saved = sidecar_path(path), meta["backbone"]
    architecture, tag = saved["architecture"], saved["tag"]
    if not architecture:
        raise ValueError(f"adapter {path} does not record its backbone architecture ('backbone.architecture')")
    if architecture not in timm.list_models():
        raise ValueError(f"adapter sidecar {side}: key 'backbone.architecture' names no timm model: {architecture!r}")
    name = architecture + (f".{tag}" if tag else "")
    if tag and name not in timm.list_pretrained(name):
        raise ValueError(
            f"adapter sidecar {side}: key 'backbone.tag' {tag!r} is not a pretrained tag of {architecture}"
        )
    options = {"num_classes": saved["num_classes"], **saved.get("overrides", {}), **overrides}
    try:
        if saved.get("weights") and weights is None:
            try:
                model = create_from_source(name, saved["weights"], **options)
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(f"adapter {path}: {err}") from err
        else:
            model = create_backbone(name, pretrained=pretrained and weights is None, weights=weights, **options)
    except TypeError as err:  # timm refuses an architecture argument
        raise ValueError(f"adapter sidecar {side}: key 'backbone.overrides' does not build {name}: {err}") from err
    return load_adapter(model, path).eval()
