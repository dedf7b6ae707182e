"""y = (x + s (x psi^T) phi^T) W^T + b as one autograd node that keeps only x for backward.

This is WeGeFT's d_in form applied to activations. Left to autograd it would also keep u = x psi^T, which makes it
save more than LoRA at r = 16 vs 8; here u is recomputed in backward (tokens x d x r work, negligible next to W).
Under autocast forward and backward compute in the autocast dtype; the inputs are saved as given (x is usually in that
dtype already). The node maps over a pack of grid points (`generate_vmap_rule`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    if device != "meta" and torch.is_autocast_enabled(device):  # meta: a shape-only pass has no autocast
        return torch.get_autocast_dtype(device)
    return None


class _InputSideLinear(torch.autograd.Function):
    generate_vmap_rule = True  # a packed run maps it over its grid points (`training.packing`)

    @staticmethod
    def forward(x, phi, psi, weight, bias, scale):  # noqa: D102 (autograd protocol)
        if (dtype := _autocast_dtype(x)) is not None:
            x, phi, psi, weight = x.to(dtype), phi.to(dtype), psi.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        x_hat = torch.add(x, F.linear(F.linear(x, psi), phi), alpha=scale)  # (..., d_in)
        return F.linear(x_hat, weight, bias)  # (..., d_out)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        x, phi, psi, weight, bias, scale = inputs
        ctx.compute_dtype = _autocast_dtype(x)  # backward casts as forward did (x is usually in it already)
        ctx.save_for_backward(x, phi, psi, weight)
        ctx.scale, ctx.has_bias = scale, bias is not None
        ctx.input_dtypes = (x.dtype, phi.dtype, psi.dtype, weight.dtype, None if bias is None else bias.dtype)

    @staticmethod
    def backward(ctx, grad_y):  # noqa: D102
        x, phi, psi, weight = ctx.saved_tensors
        if (dtype := ctx.compute_dtype) is not None:
            x, phi, psi, weight = x.to(dtype), phi.to(dtype), psi.to(dtype), weight.to(dtype)
        need_x, need_phi, need_psi, need_w, need_b, _ = ctx.needs_input_grad
        s = ctx.scale
        grad_x = grad_phi = grad_psi = grad_w = grad_b = None
        grad_y = grad_y.to(weight.dtype)
        grad_x_hat = grad_y @ weight  # (..., d_in)
        grad_u = grad_x_hat @ phi if s == 1 else (grad_x_hat @ phi) * s  # (..., r)
        if need_phi or need_w:
            u = F.linear(x, psi)  # (..., r), recomputed instead of saved
        if need_phi:
            grad_phi = _flat(grad_x_hat).T @ _flat(u)  # (d_in, r)
            if s != 1:
                grad_phi = grad_phi * s
        if need_psi:
            grad_psi = _flat(grad_u).T @ _flat(x)  # (r, d_in)
        if need_x:
            grad_x = torch.addmm(_flat(grad_x_hat), _flat(grad_u), psi).view_as(grad_x_hat)
        if need_w:
            grad_w = _flat(grad_y).T @ _flat(torch.add(x, F.linear(u, phi), alpha=s))
        if need_b and ctx.has_bias:
            grad_b = _flat(grad_y).sum(0)
        grads = (grad_x, grad_phi, grad_psi, grad_w, grad_b)
        grads = tuple(g if g is None else g.to(dt) for g, dt in zip(grads, ctx.input_dtypes, strict=True))
        return (*grads, None)


def input_side_linear(
    x: torch.Tensor,
    phi: torch.Tensor,
    psi: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """(x + scale * (x psi^T) phi^T) W^T + b, with phi (d_in, r), psi (r, d_in), W (d_out, d_in)."""
    return _InputSideLinear.apply(x, phi, psi, weight, bias, scale)
