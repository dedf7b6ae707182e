"""Checks of the options every method config shares (integers, finite numbers, dropout rates, flags, block lists)
and of a low-rank update against the width of the layer it adapts; each error names the method, option and value."""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def check_int(method: str, name: str, value: Any, minimum: int = 1) -> None:
    """Refuse an option that is not an integer of at least `minimum` (true and false are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{method}: {name} must be {what}, got {value!r}")


def check_number(
    method: str, name: str, value: Any, optional: bool = False, nonzero: bool = False, positive: bool = False
) -> None:
    """Refuse an option that is not a finite number (a NaN or infinite scale makes every update NaN), or that is zero
    (`nonzero`: a zero scale silently trains nothing but the head) or not above zero (`positive`)."""
    if value is None and optional:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (nonzero and value == 0) or (positive and value <= 0):
        what = "a positive" if positive else "a non-zero" if nonzero else "a"
        null = " or null" if optional else ""
        raise ValueError(f"{method}: {name} must be {what} finite number{null}, got {value!r}")


def check_dropout(method: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{method}: {name} must be in [0, 1), got {value!r}")


def check_flag(method: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{method}: {name} must be true or false, got {value!r}")


def check_layers(method: str, layers: Any) -> tuple[int, ...] | None:
    """`layers` as a tuple of block indices (None: every block); an empty list would adapt nothing."""
    if layers is None:
        return None
    items = list(layers) if isinstance(layers, list | tuple) else []
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise ValueError(f"{method}: layers must be a non-empty list of block indices (or null), got {layers!r}")
    return tuple(items)


def check_rank(method: str, name: str, rank: int, layer_name: str, layer: nn.Module) -> None:
    """Refuse a low-rank update of rank above the layer's width min(d_in, d_out): it is no longer low rank, and the
    extra rank adds parameters that can change nothing."""
    width = min(layer.in_features, layer.out_features)
    if rank > width:
        raise ValueError(
            f"{method}: {name} must be at most {width}, the width of {layer_name} "
            f"({layer.in_features} -> {layer.out_features}), got {rank}"
        )
