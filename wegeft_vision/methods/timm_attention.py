"""Where timm's attention reads a linear layer without calling it, and how a wrapped layer is put back in the path.

EVA, BEiT and Swin-V2 attention with separate q/v biases compute `F.linear(x, qkv.weight, cat(q_bias, k_bias,
v_bias))`, which goes around whatever wraps `qkv`. Their `qkv_bias_separate` switch computes `qkv(x) + cat(...)`
instead: the same numbers, through the wrapper.
"""

from __future__ import annotations

from torch import nn


def route_adapted_qkv(model: nn.Module) -> list[str]:
    """Switch every attention whose `qkv` was replaced (by an adapter) and whose q/v biases are separate to calling
    `qkv`; returns the names of the attention modules switched."""
    switched = []
    for name, module in model.named_modules():
        qkv = getattr(module, "qkv", None)
        if qkv is None or type(qkv) is nn.Linear or getattr(module, "q_bias", None) is None:
            continue
        if getattr(module, "qkv_bias_separate", None) is False:
            module.qkv_bias_separate = True
            switched.append(name)
    return switched
