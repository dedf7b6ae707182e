"""The fused d_in autograd node: gradients against autograd's own, autocast, and what it keeps for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wegeft_vision.methods.input_side import input_side_linear


def tensors(dtype=torch.float64, bias=True):
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 5, 6), (6, 3), (3, 6), (4, 6)] + ([(4,)] if bias else [])
    return [torch.randn(s, generator=gen, dtype=dtype, requires_grad=True) for s in shapes]


def plain(x, phi, psi, weight, bias, scale):
    return F.linear(x + scale * F.linear(F.linear(x, psi), phi), weight, bias)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_all_inputs(bias):
    args = tensors(bias=bias)
    if not bias:
        args.append(None)
    assert torch.autograd.gradcheck(lambda *a: input_side_linear(*a, 0.7), tuple(args))


def test_matches_plain_autograd_with_frozen_weight():
    x, phi, psi, w, b = tensors()
    w.requires_grad_(False), b.requires_grad_(False)
    out = input_side_linear(x, phi, psi, w, b, 1.5)
    grads = torch.autograd.grad(out.square().sum(), (x, phi, psi))
    ref = plain(x, phi, psi, w, b, 1.5)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, phi, psi))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_autocast_bfloat16_keeps_parameter_grads_in_float32():
    x, phi, psi, w, b = tensors(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = input_side_linear(x, phi, psi, w.detach(), b.detach(), 1.0)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert phi.grad.dtype == psi.grad.dtype == x.grad.dtype == torch.float32
    ref = plain(x, phi, psi, w, b, 1.0)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.1)


def test_keeps_only_the_input_for_backward():
    x, phi, psi, w, b = tensors(dtype=torch.float32)
    w.requires_grad_(False), b.requires_grad_(False)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        input_side_linear(x, phi, psi, w, b, 1.0)
    assert sorted(saved) == sorted([x.shape, phi.shape, psi.shape, w.shape])
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        plain(x, phi, psi, w, b, 1.0)
    assert any(s[-1] == 3 and s.numel() == 2 * 5 * 3 for s in saved)  # autograd alone also keeps u = x psi^T
