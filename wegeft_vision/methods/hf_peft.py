"""HuggingFace `peft` methods (optional extra, `pip install -e ".[peft]"`) behind this toolkit's method contract.

`HFPeftConfig(kind="dora", options={...})` builds the `peft` config of that kind (`KINDS` maps our names to a peft type
and its fixed options; any other peft type is reachable by its own name, e.g. kind="fourierft") and injects it in
place with the method's tuner class, so methods with state shared by layers (VeRA, VB-LoRA) work as well; the head
stays trainable (`inject`), the adapter file holds peft's trainable tensors under their module names, and `merge` /
`unmerge` use peft's per-layer merge, with unmerge restoring the very pretrained tensors. What this needs of peft
beyond its documented API is in `peft_compat.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from torch import nn

from . import peft_compat
from .base import MethodConfig
from .options import check_rank

# our name -> (peft type, options fixed by the name, defaults for a ViT's attn.proj)
KINDS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "lora": ("LORA", {}, {"r": 8}),
    "dora": ("LORA", {"use_dora": True}, {"r": 8}),
    "vera": ("VERA", {}, {"r": 256}),
    "vblora": ("VBLORA", {}, {"r": 4, "vector_length": 256, "num_vectors": 90}),
    "boft": ("BOFT", {}, {"boft_block_size": 4}),
    "loha": ("LOHA", {}, {"r": 8}),
    "lokr": ("LOKR", {}, {"r": 8}),
    "ia3": ("IA3", {}, {"feedforward_modules": []}),
}
ADAPTER = "default"


@dataclasses.dataclass
class HFPeftConfig(MethodConfig):
    """A `peft` method on the linear layers named by `targets`.

    Args:
        kind: a name in `KINDS` (lora, dora, vera, vblora, boft, loha, lokr, ia3) or any peft type (case-insensitive).
        targets: module-name suffixes (peft's `target_modules`).
        options: further arguments of the peft config (e.g. {"r": 16, "lora_alpha": 16}); they replace the defaults.
    """

    method: ClassVar[str] = "peft"

    kind: str = "lora"
    targets: tuple[str, ...] = ("attn.proj",)
    options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"peft: targets must name at least one module, got {list(self.targets)}")
        if self.options is not None and not isinstance(self.options, dict):
            raise ValueError(f"peft: options must be a mapping, got {self.options!r}")
        for key, value in (self.options or {}).items():
            if isinstance(value, float) and not math.isfinite(value):  # peft takes a NaN alpha without a word
                raise ValueError(f"peft: options.{key} must be a finite number, got {value!r}")
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"peft: kind must be a name such as {sorted(KINDS)}, got {self.kind!r}")
        self.kind = self.kind.lower()

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "targets": list(self.targets), "options": self.options}

    def peft_config(self):
        """The `peft` config object this config describes."""
        peft = peft_compat.require_peft()
        classes = peft_compat.config_classes()
        peft_type, fixed, defaults = KINDS.get(self.kind, (self.kind.upper(), {}, {}))
        if peft_type not in classes:
            known = sorted(set(KINDS) | {name.lower() for name in classes})
            raise ValueError(f"peft: unknown kind {self.kind!r} (peft {peft.__version__}); known: {known}")
        options = {**defaults, **(self.options or {}), **fixed, "target_modules": list(self.targets)}
        try:
            return classes[peft_type](**options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"peft: {self.kind} does not take options {options}: {err}") from err

    def apply(self, model: nn.Module) -> None:
        config = self.peft_config()
        try:
            peft_compat.inject(model, config, ADAPTER)
        except (TypeError, ValueError) as err:
            raise ValueError(f"peft: {self.kind} with options {self.options or {}}: {err}") from err
        if str(config.peft_type.value) == "LORA":  # lora and dora: a rank above a layer's width is not low rank
            layers = {id(layer) for layer in peft_compat.tuner_layers(model)}
            for name, layer in model.named_modules():
                if id(layer) in layers:
                    check_rank(self.method, "options.r", config.r, name, layer.get_base_layer())

    def merge_model(self, model: nn.Module) -> None:
        for layer in peft_compat.tuner_layers(model):
            base = layer.get_base_layer()
            if not layer.merged:
                base._pretrained_weight = base.weight.data
                base.weight.data = base.weight.data.clone()
                layer.merge(adapter_names=[ADAPTER])

    def unmerge_model(self, model: nn.Module) -> None:
        for layer in peft_compat.tuner_layers(model):
            base = layer.get_base_layer()
            if layer.merged:
                layer.unmerge()
                base.weight.data = base.__dict__.pop("_pretrained_weight")  # bit-identical, not W + ΔW - ΔW
