"""timm backbones: creation by name and pretrained tag, where their weights came from, and their data settings.

Knows nothing of adapters; `methods` edits what this returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.data import resolve_data_config, resolve_model_data_config
from timm.models import clean_state_dict, get_pretrained_cfg
from torch import nn

from ..files import UnreadableFile, UnsafePickle, safe_torch_load, sha256_of
from . import mini_vit

# The authors' choice for the vision experiments (ImageNet-21k, AugReg); `vit_base_patch16_224.orig_in21k` is the
# original ViT-B/16 checkpoint behind VPT/NOAH-style numbers.
DEFAULT_BACKBONE = "vit_base_patch16_224.augreg_in21k"


WeightsSource = dict[str, Any]  # {"kind": "hub" | "shipped" | "file" | "random", ...}; JSON-ready

_CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # where timm looks, EMA weights first


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    num_classes: int = 1000,
    pretrained: bool = False,
    weights: str | Path | None = None,
    init_seed: int = 0,
    **overrides: Any,
) -> nn.Module:
    """A timm model `name` (`architecture[.tag]`) with a fresh `num_classes`-way head.

    The model's `weights_source` attribute records where its weights came from (see `weights_source`), so that
    `create_from_source` can build the very same backbone again.

    Args:
        name: timm model name, optionally with a pretrained tag.
        num_classes: size of the classification head (a pretrained head of another size is dropped).
        pretrained: load the tag's weights: shipped with this package (`vit_mini_patch8_32.procedural`), or from the
            Hugging Face cache, or the hub when reachable.
        weights: a local weights file (safetensors or a PyTorch state dict) to load instead.
        init_seed: seed of the random initialization when neither `pretrained` nor `weights` is given (the global
            random state is left as it was).
        overrides: architecture arguments passed to timm (e.g. `img_size`, `depth` for tiny test models).

    Raises:
        ValueError: unknown model name, or a weights file that is refused (see `read_weights_file`) or does not fit
            the architecture (a tensor of the backbone missing or of another shape).
        FileNotFoundError: a missing weights file, or pretrained weights neither cached nor reachable.
    """
    if name.split(".")[0] not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r}")
    if name in mini_vit.RETIRED:
        raise ValueError(f"backbone {name!r} is {mini_vit.RETIRED[name]}")
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights file {weights} does not exist")
        # Read here, never unpickled beyond tensors; timm then maps the state dict onto the model (head, input conv,
        # position embeddings) and records the file as the pretrained source.
        state = read_weights_file(weights)
        _require_backbone_tensors(name, num_classes, overrides, state, weights)
        try:
            model = timm.create_model(
                name,
                pretrained=True,
                num_classes=num_classes,
                pretrained_cfg_overlay={"file": str(weights), "state_dict": state},
                **overrides,
            )
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"weights file {weights} does not fit {name}: {err}") from err
        model.pretrained_cfg.pop("state_dict", None)  # its tensors are in the model now; the cfg keeps the file
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **overrides)
        except OSError as err:
            raise FileNotFoundError(
                f"pretrained weights of {name} are neither in the Hugging Face cache nor reachable "
                f"({type(err).__name__}); fetch them once where the hub is reachable, or pass a local file with "
                f"weights=PATH (--weights), or use the shipped {mini_vit.NAME}"
            ) from err
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
        model.weights_source = {"kind": "random", "seed": init_seed}
        return model
    model.weights_source = _loaded_source(model.pretrained_cfg)
    return model


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file, read without running anything stored in it.

    A `.safetensors` file holds tensors only. Any other file is read as a PyTorch pickle with
    `torch.load(weights_only=True)`: tensors, containers, numbers and `SAFE_GLOBALS`; a pickle that asks for any other
    object (the way a malicious file runs code while it loads) is refused before anything is built from it. The
    weights of a training checkpoint are its `state_dict_ema`, `model_ema`, `state_dict` or `model` entry, as timm
    reads them, with a `module.` prefix (DataParallel) dropped.

    Raises:
        ValueError: a file in neither format, a refused pickle, or one that holds no mapping of names to tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"weights file {path} is not a readable safetensors file: {err}") from err
    try:
        data = safe_torch_load(path)
    except UnsafePickle as err:
        raise ValueError(
            f"weights file {path} is refused: it is a pickle that asks for more than tensors ({err}); "
            "give a .safetensors file or a PyTorch state dict"
        ) from err
    except UnreadableFile as err:
        raise ValueError(f"weights file {path} is neither safetensors nor a readable PyTorch file: {err}") from err
    if isinstance(data, dict):
        data = next((data[k] for k in _CHECKPOINT_KEYS if isinstance(data.get(k), dict)), data)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors)")
    odd = next((k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ValueError(
            f"weights file {path}: entry {odd!r} holds {type(data[odd]).__name__}, not a tensor; expected a state dict"
        )
    return clean_state_dict(data)


def _require_backbone_tensors(
    name: str, num_classes: int, overrides: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> None:
    """Refuse a weights file that lacks tensors of the backbone, before timm loads it: for a head of another size timm
    loads leniently (it only logs the keys it missed), which would leave those tensors at their random init. The
    names come from the model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    missing = [k for k in model.state_dict() if k not in state and not any(k.startswith(h + ".") for h in heads)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"weights file {path} does not fit {name}: it lacks {', '.join(missing[:3])}{more}")


def _loaded_source(cfg: dict[str, Any]) -> WeightsSource:
    file = cfg.get("file")
    if not file:
        return {"kind": "hub", **{k: cfg[k] for k in ("hf_hub_id", "url") if cfg.get(k)}}
    path = Path(file).resolve()
    if path.parent == mini_vit.WEIGHTS_DIR:
        return {"kind": "shipped", "file": path.name, "sha256": sha256_of(path)}
    return {"kind": "file", "path": str(path), "sha256": sha256_of(path)}


def weights_source(model: nn.Module) -> WeightsSource | None:
    """Where the backbone's weights came from, as recorded by `create_backbone`; None for a model built elsewhere.

    One of `{"kind": "hub", "hf_hub_id": ...}`, `{"kind": "shipped", "file": ..., "sha256": ...}` (this package's
    weights), `{"kind": "file", "path": ..., "sha256": ...}` or `{"kind": "random", "seed": ...}`.
    """
    source = getattr(model, "weights_source", None)
    return dict(source) if source else None


def describe_source(source: WeightsSource | None) -> str:
    """One short field for tables: `hub`, `shipped@<sha12>`, `file:<path>@<sha12>`, `random:seed<k>` or `unknown`."""
    if not source:
        return "unknown"
    kind = source["kind"]
    if kind == "shipped":
        return f"shipped@{source['sha256'][:12]}"
    if kind == "file":
        return f"file:{source['path']}@{source['sha256'][:12]}"
    if kind == "random":
        return f"random:seed{source['seed']}"
    return kind


def create_from_source(name: str, source: WeightsSource, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Build again the backbone `name` whose weights came from `source` (what `weights_source` recorded).

    Only a `hub` source touches the network. Shipped weights and local files must still have the recorded sha256.

    Raises:
        ValueError: an unknown kind, or weights whose content changed since they were recorded.
        FileNotFoundError: a recorded local file that is gone.
    """
    kind = source.get("kind")
    if kind == "random":
        return create_backbone(name, num_classes, init_seed=int(source["seed"]), **overrides)
    if kind == "hub":
        return create_backbone(name, num_classes, pretrained=True, **overrides)
    if kind not in ("shipped", "file"):
        raise ValueError(f"unknown backbone weights source {source!r}; expected kind hub, shipped, file or random")
    path = Path(source["path"]) if kind == "file" else mini_vit.WEIGHTS_DIR / source["file"]
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} (recorded with sha256 {source['sha256']}) is gone")
    found = sha256_of(path)  # checked before anything is loaded from it
    if found != source["sha256"]:
        raise ValueError(
            f"backbone weights {path} have sha256 {found}, not the recorded {source['sha256']}: they changed since"
        )
    if kind == "file":
        return create_backbone(name, num_classes, weights=path, **overrides)
    return create_backbone(name, num_classes, pretrained=True, **overrides)


def backbone_tag(model: nn.Module) -> str:
    """`architecture.tag` of a timm model, as recorded in results and adapter files."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture", type(model).__name__), cfg.get("tag")
    return f"{arch}.{tag}" if tag else arch


def data_config(backbone: nn.Module | str, img_size: int | None = None) -> dict[str, Any]:
    """Input size, interpolation, mean and std stored with a backbone's pretrained weights: the one place a data config
    is computed.

    Args:
        backbone: a timm model (its pretrained config; the input size is the model's own `patch_embed.img_size`
            when it was built with another `img_size`), or `architecture[.tag]` (the tag's pretrained config, read
            without building anything).
        img_size: the `img_size` a named backbone is built with (`model.backbone_overrides`), if not its default.

    Raises:
        ValueError: timm knows no pretrained config of that name.
    """
    if isinstance(backbone, str):
        cfg = get_pretrained_cfg(backbone)
        if cfg is None:
            raise ValueError(f"timm has no pretrained config for {backbone!r}; expected architecture[.tag]")
        config = resolve_data_config(pretrained_cfg=cfg.to_dict())
        size = (img_size, img_size) if img_size else None
    else:
        config = resolve_model_data_config(backbone)
        size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if size is not None:
        config["input_size"] = (config["input_size"][0], *size)
    return config
