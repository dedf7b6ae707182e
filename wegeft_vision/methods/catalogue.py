"""The named method variants, as data: the rows of `wegeft-vision params` and of `scripts/bench_methods.py`.

A `Variant` is a name for command lines and files, a label for tables, and a config class with its options. `VARIANTS`
holds them in table order; `variants()` adds one per peft kind when the `peft` extra is installed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .base import MethodConfig, count_trainable, inject
from .bitfit import BitFitConfig
from .fact import FacTTKConfig, FacTTTConfig
from .genft import GenFTConfig
from .hf_peft import KINDS, HFPeftConfig
from .lora import LoRAConfig, SharedLoRAConfig
from .peft_compat import peft_available
from .probe import FullFinetuneConfig, LinearProbeConfig
from .vpt import VPTConfig
from .wegeft import WeGeFTConfig


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named method variant.

    Args:
        name: for command lines and files (`wegeft-mlp`).
        label: for tables (`WeGeFT-MLP`).
        cls: the method's config class.
        options: the config's arguments that differ from its defaults.
    """

    name: str
    label: str
    cls: type[MethodConfig]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def config(self) -> MethodConfig:
        """A new config of this variant."""
        return self.cls(**self.options)


def _wegeft(name: str, label: str, **options: Any) -> Variant:
    return Variant(name, label, WeGeFTConfig, options)


VARIANTS: tuple[Variant, ...] = (
    _wegeft("wegeft", "WeGeFT"),
    _wegeft("wegeft-d-out", "WeGeFT (d_out)", variant="d_out"),
    _wegeft("wegeft-sep", "WeGeFT-Sep", shared=False),
    # g_theta ablations (the paper's Table 8) and GIFT v1's parameter-to-cluster attention (PaCa)
    _wegeft("wegeft-sigmoid", "WeGeFT-sigmoid", g_theta="sigmoid"),
    _wegeft("wegeft-relu", "WeGeFT-ReLU", g_theta="relu"),
    _wegeft("wegeft-gelu", "WeGeFT-GELU", g_theta="gelu"),
    _wegeft("wegeft-mlp", "WeGeFT-MLP", g_theta="mlp"),
    _wegeft("wegeft-mlp-per-layer", "WeGeFT-MLP (one per layer)", g_theta="mlp", g_theta_per_layer=True),
    _wegeft("wegeft-transformer", "WeGeFT-Transformer", g_theta="transformer"),
    _wegeft("wegeft-mixer", "WeGeFT-MLP-Mixer", g_theta="mixer"),
    _wegeft("paca", "GIFT-PaCa", g_theta="paca"),
    _wegeft("paca-attn", "GIFT-PaCa-attn", g_theta="paca_attn"),
    Variant("lora", "LoRA", LoRAConfig),
    # compared under the same recipe: the weight-unaware control (Table 9), GenFT, FacT
    Variant("lora-shared", "Shared LoRA", SharedLoRAConfig),
    Variant("genft-qv", "GenFT (q, v)", GenFTConfig),
    Variant("genft-proj", "GenFT (proj)", GenFTConfig, {"targets": ("attn.proj",)}),
    Variant("fact-tt", "FacT-TT", FacTTTConfig),
    Variant("fact-tk", "FacT-TK", FacTTKConfig),
    Variant("vpt", "VPT-deep", VPTConfig),
    Variant("bitfit", "BitFit", BitFitConfig),
    Variant("linear", "Linear probe", LinearProbeConfig),
    Variant("full", "Full fine-tuning", FullFinetuneConfig),
)


def variants() -> list[Variant]:
    """`VARIANTS`, then one per peft kind (`peft-dora`, labelled `peft:dora`) when the `peft` extra is installed."""
    peft = [Variant(f"peft-{kind}", f"peft:{kind}", HFPeftConfig, {"kind": kind}) for kind in KINDS]
    return [*VARIANTS, *(peft if peft_available() else [])]


def parameter_table(backbone: nn.Module, rows: Iterable[Variant] | None = None) -> list[dict[str, Any]]:
    """Per variant (default: `variants()`): its name, label, config, trainable parameters without the head, and their
    share of the backbone's. `backbone` is not modified (each variant is injected into a copy). A variant that does not
    fit the backbone (VB-LoRA's vector length on a narrow model) gets `trainable` None and the reason in `error`."""
    backbone_params = count_trainable(inject(copy.deepcopy(backbone), FullFinetuneConfig()))
    table = []
    for variant in variants() if rows is None else rows:
        config = variant.config()
        row: dict[str, Any] = {"variant": variant.name, "method": variant.label, "config": config.to_dict()}
        try:
            trainable = count_trainable(inject(copy.deepcopy(backbone), config))
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as error:  # the latter two: on meta
            table.append({**row, "trainable": None, "millions": None, "percent_of_backbone": None, "error": str(error)})
            continue
        row.update(
            trainable=trainable,
            millions=round(trainable / 1e6, 3),
            percent_of_backbone=100.0 * trainable / backbone_params,
        )
        table.append(row)
    return table
