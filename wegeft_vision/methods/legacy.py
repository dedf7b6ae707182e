"""Names in files of earlier versions (adapter sidecars and tensors, method presets), mapped to today's.

Adapter `format_version` 1 predates the renaming of WeGeFT's parts: the (phi, psi) holder was a layer's `generator`, a
shared g_theta lived inside it as `generator.g`, a layer's own g_theta was its `g`, and the options `generator*` are
today's `g_theta*`. Version 2 uses today's names.
"""

from __future__ import annotations

from typing import Any

# method -> {former option name: today's}
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "wegeft": {
        "generator": "g_theta",
        "generator_per_layer": "g_theta_per_layer",
        "generator_norm": "g_theta_norm",
        "generator_ratio": "g_theta_ratio",
        "generator_heads": "g_theta_heads",
    },
}
# former config class name (a preset's `class_path`) -> today's
RENAMED_CLASSES: dict[str, str] = {"PeftConfig": "HFPeftConfig"}


def current_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """`options` of `method` with former names replaced by today's.

    Raises:
        ValueError: an option given under both its former and its current name.
    """
    renamed = RENAMED_OPTIONS.get(method, {})
    both = [f"{old!r} and {new!r}" for old, new in renamed.items() if old in options and new in options]
    if both:
        raise ValueError(f"{method}: {', '.join(both)} are one option (former and current name): give one")
    return {renamed.get(key, key): value for key, value in options.items()}


def current_tensor_name(method: str, name: str, format_version: int) -> str:
    """Today's name of the tensor `name` in an adapter file of `format_version` holding `method`."""
    if format_version >= 2 or method != "wegeft":
        return name
    layer, found, rest = name.partition(".generator.")
    if found:  # the (phi, psi) holder, and the shared g_theta it held as `g`
        return f"{layer}.g_theta.{rest[2:]}" if rest.startswith("g.") else f"{layer}.projections.{rest}"
    layer, found, rest = name.partition(".g.")  # a layer's own g_theta (`g_theta_per_layer`)
    return f"{layer}.g_theta.{rest}" if found else name
