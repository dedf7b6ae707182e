"""Adapters released with the WeGeFT authors' code (github.com/savadikarc/gift) turned into this toolkit's adapters.

Their vision checkpoints are timm training checkpoints (`last.pth.tar`): `arch` (timm `architecture.tag`), `args`
(the run's `argparse.Namespace`), `metric` (top-1 of the last evaluation), `epoch`, and a `state_dict` holding the
head (`backbone.head.weight`, `backbone.head.bias`) and one projection pair per target key T (e.g. `attn:proj`):
`in_projections.T.weight` P_in (r, d_in) and `out_projections.T.weight` P_out (d_in, r).

The mapping, from their forward pass (`gift/gift/modeling_gift.py`, commit 0264614): the forward pre-hook of every
layer matching T (`GIFTWrapper.residual_forward_hook`) computes, in `GIFTWrapper._gift_forward`,
    ΔW = out_projections[T](hypernets[T](in_projections[T](W))),
where in_projections[T] = nn.Linear(d_in, r, bias=False) and out_projections[T] = nn.Linear(r, d_in, bias=False)
act on the rows of W (d_out, d_in), and the hypernet is their `simple_block` with the identity activation, which
holds no tensors (`configuration_gift.SIMPLE_BLOCK_PARAMS`; `model_builder.build_gift` keeps only that block's
arguments). The hook passes no `scale`, so `GIFTLinear.forward` returns x Wᵀ + b + x ΔWᵀ:
    Ŵ = W + W · P_inᵀ · P_outᵀ.
This toolkit's d_in form Ŵ = W + (α/r) · W · φ · ψ is the same weight with
    φ = P_inᵀ (d_in, r),   ψ = P_outᵀ (r, d_in),   α = r (`alpha=None`: scale 1),
one (φ, ψ) shared by every layer that T matches (their projections belong to the target key, not to a layer), T's
`:` read as `.` (`attn:proj` -> `attn.proj`; they match a module whose name ends with `.attn.proj`, as we do).
Checkpoints with no such form are refused by name: another hypernet block or activation, hypernet or bias tensors,
fused `qkv` sub-modules (`enable_gift`), several target keys.

Reading: `torch.load(weights_only=True)` with `argparse.Namespace` as the only allowed global besides tensors and
containers (`files.SAFE_GLOBALS`, the allow-list `read_weights_file` uses): a pickle that asks for any
other object is refused before it runs anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter_file import save_adapter
from .base import inject, trainable_parameters
from .wegeft import WeGeFTConfig, WeGeFTLinear

HEAD = ("backbone.head.weight", "backbone.head.bias")
IN, OUT = "in_projections.", "out_projections."
SHARED_KEY = "shared_projection"  # their key when one pair serves several target keys
ARG_PREFIXES = ("gift_", "hypernet_")  # released code `--gift_*`; the released checkpoints' pre-release `hypernet_*`


@dataclasses.dataclass(frozen=True)
class AuthorsCheckpoint:
    """The parts of one checked checkpoint that make an adapter.

    Args:
        path: the checkpoint file.
        sha256: its sha256.
        backbone: timm `architecture.tag` (from `arch`).
        target: their target key T (`attn:proj`).
        projection_key: the projections' key in `state_dict` (T, or `shared_projection`).
        in_projection: P_in, (r, d_in).
        out_projection: P_out, (d_in, r).
        head_weight: (classes, embed dim).
        head_bias: (classes,).
        args: the training arguments as JSON-ready values.
        metric: the top-1 the checkpoint records (None if it records none).
        epoch: the epoch it was written at (None if it records none).
    """

    path: Path
    sha256: str
    backbone: str
    target: str
    projection_key: str
    in_projection: torch.Tensor
    out_projection: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    args: dict[str, Any]
    metric: float | None
    epoch: int | None

    @property
    def rank(self) -> int:
        return self.in_projection.shape[0]

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]

    @property
    def phi(self) -> torch.Tensor:
        return self.in_projection.T  # (d_in, r)

    @property
    def psi(self) -> torch.Tensor:
        return self.out_projection.T  # (r, d_in)

    def config(self) -> WeGeFTConfig:
        """WeGeFT d_in, shared, scale 1 (alpha = r), identity g, no dropout, on the layers T names."""
        return WeGeFTConfig(rank=self.rank, alpha=None, variant="d_in", shared=True, targets=(_pattern(self.target),))


def _pattern(target: str) -> str:
    return target.replace(":", ".")


class _Faults:
    """Refusals of one checkpoint, each naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key: str, problem: str) -> ValueError:
        return ValueError(f"authors' checkpoint {self.path}: key '{key}' {problem}")


def _load(path: Path) -> Any:
    """The unpickled checkpoint: tensors, containers, numbers and `argparse.Namespace` only."""
    from ..files import UnreadableFile, UnsafePickle, safe_torch_load

    if not path.is_file():
        raise FileNotFoundError(f"authors' checkpoint {path} does not exist")
    try:
        return safe_torch_load(path)
    except UnsafePickle as err:
        raise ValueError(
            f"authors' checkpoint {path} is refused: it is a pickle that asks for more than tensors and "
            f"argparse.Namespace ({err})"
        ) from err
    except UnreadableFile as err:
        raise ValueError(f"authors' checkpoint {path} is not a readable PyTorch checkpoint: {err}") from err


def plain(value: Any) -> Any:
    """`value` as JSON-ready data: Namespaces and mappings as objects, sequences as lists, small tensors as numbers,
    non-finite floats and anything else as their text."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return plain(value.tolist()) if value.numel() <= 16 else f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _arg(args: dict[str, Any], *names: str) -> tuple[str, Any] | None:
    """The first of `gift_<name>` / `hypernet_<name>` (for each of `names`) the arguments hold, with its key."""
    for name in names:
        for prefix in ARG_PREFIXES:
            if prefix + name in args:
                return prefix + name, args[prefix + name]
    return None


def _check_args(fault: _Faults, args: dict[str, Any]) -> None:
    """Refuse training arguments of a method or hypernet with no (phi, psi) form."""
    if "method" in args and args["method"] != "gift":
        raise fault("args.method", f"is {args['method']!r}: not a WeGeFT (GIFT) checkpoint")
    expected = {"block_block_type": "simple_block", "block_act_layer": "identity"}
    for name, wanted in expected.items():
        found = _arg(args, name)
        if found and found[1] != wanted:
            raise fault(f"args.{found[0]}", f"is {found[1]!r}: only the {wanted!r} hypernet maps onto (phi, psi)")
    for name in ("in_projection_bias", "out_projection_bias"):
        found = _arg(args, name)
        if found and found[1]:
            raise fault(f"args.{found[0]}", "is set: projection biases have no counterpart in (phi, psi)")
    found = _arg(args, "enable_gift")
    if found and found[1] is not None:
        raise fault(f"args.{found[0]}", f"is {found[1]!r}: fused qkv sub-modules are not supported")


def _tensor(fault: _Faults, state: dict[str, Any], key: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise fault(f"state_dict.{key}", "is missing")
    tensor = state[key]
    if not isinstance(tensor, torch.Tensor):
        raise fault(f"state_dict.{key}", f"should be a tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point() or tensor.ndim != ndim:
        shown = f"a {tensor.dtype} tensor of shape {tuple(tensor.shape)}"
        raise fault(f"state_dict.{key}", f"should be a floating-point tensor with {ndim} dimension(s), got {shown}")
    if not torch.isfinite(tensor).all():
        raise fault(f"state_dict.{key}", "holds NaN or infinite values")
    return tensor


def _target(fault: _Faults, state: dict[str, Any], args: dict[str, Any]) -> str:
    """The one target key T of the projections; every other tensor than T's pair and the head is refused."""
    for key in state:
        if key in HEAD:
            continue
        prefix = next((p for p in (IN, OUT) if isinstance(key, str) and key.startswith(p)), None)
        if prefix is None:
            raise fault(f"state_dict.{key}", "is not a projection or the head: only the identity hypernet is supported")
        if not key.endswith(".weight"):
            raise fault(f"state_dict.{key}", "is not a projection weight: projection biases are not supported")
    targets = {k[len(IN) : -len(".weight")] for k in state if k.startswith(IN)}
    outs = {k[len(OUT) : -len(".weight")] for k in state if k.startswith(OUT)}
    if not targets:
        raise fault(f"state_dict.{IN}*", "is missing: not a WeGeFT (GIFT) adapter")
    if targets != outs:
        missing = sorted(f"{IN if t in outs else OUT}{t}.weight" for t in targets ^ outs)
        raise fault(f"state_dict.{missing[0]}", "is missing: projections come in pairs")
    if len(targets) > 1:
        raise fault("state_dict", f"holds projections of several target keys {sorted(targets)}: one is supported")
    (target,) = targets
    listed = _arg(args, "target_modules")
    if target == SHARED_KEY:
        if not listed or not isinstance(listed[1], list) or len(listed[1]) != 1:
            raise fault("args.*target_modules", f"should name the one target of '{SHARED_KEY}'")
        return str(listed[1][0])
    if listed and isinstance(listed[1], list) and listed[1] != [target]:
        raise fault(f"args.{listed[0]}", f"is {listed[1]!r}, the projections belong to {target!r}")
    return target


def _backbone(fault: _Faults, arch: Any) -> str:
    import timm

    if not isinstance(arch, str) or "." not in arch:
        raise fault("arch", f"should be a timm 'architecture.tag', got {arch!r}: the backbone's weights are unknown")
    if arch.split(".")[0] not in timm.list_models():
        raise fault("arch", f"names no timm architecture: {arch!r}")
    if arch not in timm.list_pretrained(arch):
        raise fault("arch", f"{arch!r} is not a pretrained tag known to timm {timm.__version__}")
    return arch


def read_authors_checkpoint(path: str | Path) -> AuthorsCheckpoint:
    """Read and check a checkpoint of the authors' code (see the module docstring for what is accepted).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a refused pickle, a file that is not a PyTorch checkpoint, or a checkpoint that is not a WeGeFT
            adapter of this form (the message names the file and the key).
    """
    from ..files import sha256_of

    path = Path(path)
    data = _load(path)
    fault = _Faults(path)
    if not isinstance(data, dict):
        raise ValueError(f"authors' checkpoint {path} holds a {type(data).__name__}, not a training checkpoint dict")
    for key in ("arch", "state_dict", "args"):
        if key not in data:
            raise fault(key, "is missing: not a checkpoint of the authors' training script")
    state, args = data["state_dict"], data["args"]
    if not isinstance(state, dict):
        raise fault("state_dict", f"should be a mapping of names to tensors, got {type(state).__name__}")
    if not isinstance(args, (argparse.Namespace, dict)):
        raise fault("args", f"should be an argparse.Namespace, got {type(args).__name__}")
    args = plain(args)
    _check_args(fault, args)
    backbone = _backbone(fault, data["arch"])
    head_weight, head_bias = _tensor(fault, state, HEAD[0], 2), _tensor(fault, state, HEAD[1], 1)
    target = _target(fault, state, args)
    key = target if f"{IN}{target}.weight" in state else SHARED_KEY
    p_in = _tensor(fault, state, f"{IN}{key}.weight", 2)
    p_out = _tensor(fault, state, f"{OUT}{key}.weight", 2)
    if p_out.shape != p_in.shape[::-1]:
        raise fault(f"state_dict.{OUT}{key}.weight", f"has shape {tuple(p_out.shape)}, expected {p_in.shape[::-1]}")
    if head_bias.shape[0] != head_weight.shape[0]:
        raise fault(
            f"state_dict.{HEAD[1]}", f"has {head_bias.shape[0]} classes, the head weight {head_weight.shape[0]}"
        )
    rank = _arg(args, "rank", "embed_dim")  # `--gift_rank`; `--hypernet_embed_dim` before the release
    classes = ("num_classes", args["num_classes"]) if "num_classes" in args else None
    for found, actual, what in (
        (rank, p_in.shape[0], "the projections' rank"),
        (classes, head_weight.shape[0], "the head's classes"),
    ):
        if found and found[1] is not None and found[1] != actual:
            raise fault(f"args.{found[0]}", f"is {found[1]!r}, {what} {actual}")
    metric, epoch = data.get("metric"), data.get("epoch")
    metric = metric.item() if isinstance(metric, torch.Tensor) and metric.numel() == 1 else metric
    if metric is not None and (
        isinstance(metric, bool) or not isinstance(metric, (int, float)) or not math.isfinite(metric)
    ):
        raise fault("metric", f"should be a finite number, got {metric!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise fault("epoch", f"should be an integer, got {type(epoch).__name__}")
    return AuthorsCheckpoint(
        path=path,
        sha256=sha256_of(path),
        backbone=backbone,
        target=target,
        projection_key=key,
        in_projection=p_in,
        out_projection=p_out,
        head_weight=head_weight,
        head_bias=head_bias,
        args=args,
        metric=None if metric is None else float(metric),
        epoch=epoch,
    )


def adapter_model(checkpoint: AuthorsCheckpoint, backbone_overrides: dict[str, Any] | None = None) -> nn.Module:
    """The checkpoint's backbone injected with its config and holding its phi, psi and head.

    Only the adapter's tensors are meaningful: the backbone is allocated without being initialized (built on the
    meta device, then given memory), so this model is for `save_adapter`, not for inference. Its weights source is
    the hub tag, where the authors' backbone came from.
    """
    import timm

    fault = _Faults(checkpoint.path)
    with torch.device("meta"):
        model = timm.create_model(
            checkpoint.backbone, pretrained=False, num_classes=checkpoint.num_classes, **(backbone_overrides or {})
        )
        try:
            inject(model, checkpoint.config())
        except (ValueError, TypeError) as err:
            key = f"state_dict.{IN}{checkpoint.projection_key}.weight"
            raise fault(key, f"does not apply to {checkpoint.backbone}: {err}") from err
    model.to_empty(device="cpu")
    cfg = model.pretrained_cfg
    model.weights_source = {"kind": "hub", **{k: cfg[k] for k in ("hf_hub_id", "url") if cfg.get(k)}}
    found = {id(m.projections): m.projections for m in model.modules() if isinstance(m, WeGeFTLinear)}
    (projections,) = found.values()  # shared=True and one target: one (phi, psi)
    head = model.get_classifier()
    pairs = [
        (projections.phi, checkpoint.phi, f"{IN}{checkpoint.projection_key}.weight"),
        (projections.psi, checkpoint.psi, f"{OUT}{checkpoint.projection_key}.weight"),
        (head.weight, checkpoint.head_weight, HEAD[0]),
        (head.bias, checkpoint.head_bias, HEAD[1]),
    ]
    with torch.no_grad():
        for param, tensor, key in pairs:
            if param.shape != tensor.shape:
                raise fault(
                    f"state_dict.{key}",
                    f"does not fit {checkpoint.backbone}: maps to shape {tuple(tensor.shape)}, the model's is "
                    f"{tuple(param.shape)}",
                )
            param.copy_(tensor)
    assert {id(p) for p in trainable_parameters(model).values()} == {id(p) for p, _, _ in pairs}
    return model


def import_authors_checkpoint(
    path: str | Path, out: str | Path, backbone_overrides: dict[str, Any] | None = None
) -> tuple[Path, AuthorsCheckpoint]:
    """Write the authors' checkpoint at `path` as an adapter (`out`, .safetensors) with its JSON sidecar.

    The sidecar records the WeGeFT config, the backbone (the hub tag of `arch`), the class count and, in `extra`,
    `imported_from` (file name, sha256, epoch, target key), the checkpoint's `args` and its `metric`.

    Args:
        path: the checkpoint (`last.pth.tar`).
        out: the adapter file to write.
        backbone_overrides: timm architecture arguments (tiny test models), recorded with the adapter.

    Returns:
        The adapter path and the checked checkpoint.
    """
    checkpoint = read_authors_checkpoint(path)
    extra = {
        "imported_from": {
            "file": checkpoint.path.name,
            "sha256": checkpoint.sha256,
            "epoch": checkpoint.epoch,
            "target": checkpoint.target,
        },
        "args": checkpoint.args,
        "metric": checkpoint.metric,
    }
    model = adapter_model(checkpoint, backbone_overrides)
    return save_adapter(model, out, extra=extra, backbone_overrides=backbone_overrides), checkpoint
