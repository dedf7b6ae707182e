"""The proof that a method takes part in the output: one dry forward and backward pass after injection.

A wrapper the model goes around (timm's EVA and BEiT attention read `qkv.weight` with `F.linear` instead of calling
`qkv`) adds trainable tensors whose gradient is exactly zero: the run would train a linear probe and report the
parameters of a method. Checking the graph once, on one input of the model's size, turns that into an error.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..backbones import data_config

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) a timm image model takes (its own `patch_embed.img_size` when built with another
    size); None for a model that is not one (no pretrained config, no patch embedding)."""
    if not getattr(model, "pretrained_cfg", None) and not hasattr(model, "patch_embed"):
        return None
    return tuple(int(s) for s in data_config(model)["input_size"])


def _wrappers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules holding both trainable and frozen tensors: an adapter around a frozen layer, a prompted block, a
    layer whose bias trains. Each must run in the forward pass (a shared tensor's gradient from another layer would
    hide one that is bypassed)."""
    for name, module in model.named_modules():
        if isinstance(module, _CONTAINERS):  # iterated, never called
            continue
        flags = {p.requires_grad for p in module.parameters()}
        if name and flags == {True, False}:
            yield name, module


def require_participation(model: nn.Module, method: str) -> None:
    """Raise unless every trainable tensor of `model` receives a gradient from its output and every module mixing
    trainable and frozen tensors runs, on one input of the model's size (batch 1, eval mode). A model whose input
    is not an image of a known size (no timm pretrained config nor patch embedding) is not checked.

    Nothing changes: the modules' training flags are restored, no `.grad` is written, the global random state is left
    as it was. On the meta device the same graph is checked without computing anything.

    Raises:
        ValueError: naming the module that never runs or the tensor that gets no gradient, and the method.
    """
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    shape = input_shape(model)
    if not trainable or shape is None:  # nothing to prove, or no image input to prove it with
        return
    reference = next(iter(trainable.values()))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    images = images.to(device=reference.device, dtype=reference.dtype)
    ran: set[int] = set()
    wrappers = dict(_wrappers(model))
    handles = [m.register_forward_hook(lambda m, a, o: ran.add(id(m))) for m in wrappers.values()]
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            output = model(images)
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            total = sum(o.float().sum() for o in outputs)
            grads = torch.autograd.grad(total, list(trainable.values()), allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    skipped = [n for n, m in wrappers.items() if id(m) not in ran]
    # the outermost module that never ran is the one the model goes around
    skipped = [n for n in skipped if not any(n.startswith(s + ".") for s in skipped)]
    if skipped:
        module = model.get_submodule(skipped[0])
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise ValueError(
            f"{method}: {skipped[0]} ({type(module).__name__}){more} never runs in the model's forward pass, so its "
            "trainable tensors would get no gradient: the model reads around it (e.g. F.linear on its weight)"
        )
    unused = [n for (n, _), g in zip(trainable.items(), grads, strict=True) if g is None]
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ValueError(
            f"{method}: trainable tensor {unused[0]}{more} takes no part in the model's output (it gets no gradient)"
        )
