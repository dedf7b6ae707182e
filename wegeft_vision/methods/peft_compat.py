"""What `hf_peft.py` uses of HuggingFace peft beyond its documented API, in one place.

peft's public `inject_adapter_in_model` refuses tuners whose state is shared by layers (VeRA, VB-LoRA), so a method is
injected the way `get_peft_model` does it inside: by the tuner class of its type, from peft's type tables
(`peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING`, `PEFT_TYPE_TO_TUNER_MAPPING`), called as `tuner(model, config,
adapter_name)`; merge and unmerge go through the layers' `BaseTunerLayer` API (`get_base_layer`, `merged`,
`merge(adapter_names=...)`, `unmerge`). `missing()` names what an installed peft lacks of this: tests fail on it, and a
peft method refuses to run with it.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from types import ModuleType

from torch import nn

_LAYER_API = ("get_base_layer", "merged", "merge", "unmerge")


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


def missing() -> list[str]:
    """What this module relies on and the installed peft lacks (empty when all is there, or peft is absent)."""
    if not peft_available():
        return []
    try:
        from peft import mapping
        from peft.tuners import tuners_utils
    except ImportError as err:
        return [f"module {err.name}"]
    gaps = [
        f"peft.mapping.{name} (a dict)"
        for name in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING")
        if not isinstance(getattr(mapping, name, None), dict)
    ]
    layer = getattr(tuners_utils, "BaseTunerLayer", None)
    if layer is None:
        gaps.append("peft.tuners.tuners_utils.BaseTunerLayer")
    else:
        gaps += [f"BaseTunerLayer.{name}" for name in _LAYER_API if not hasattr(layer, name)]
        if hasattr(layer, "merge") and "adapter_names" not in inspect.signature(layer.merge).parameters:
            gaps.append("BaseTunerLayer.merge(adapter_names=...)")
    tuner = getattr(tuners_utils, "BaseTuner", None)
    arguments = list(inspect.signature(tuner.__init__).parameters)[1:4] if tuner is not None else []
    if arguments != ["model", "peft_config", "adapter_name"]:
        gaps.append("peft.tuners.tuners_utils.BaseTuner(model, peft_config, adapter_name)")
    return gaps


def require_peft() -> ModuleType:
    """The `peft` module, once it is known to provide what this module uses.

    Raises:
        ValueError: peft is not installed, or lacks something this module relies on (named, with its version).
    """
    if not peft_available():
        raise ValueError('method "peft" needs the HuggingFace peft library: pip install -e ".[peft]"')
    import peft

    gaps = missing()
    if gaps:
        raise ValueError(f'peft {peft.__version__} lacks what method "peft" relies on: {", ".join(gaps)}')
    return peft


def config_classes() -> dict[str, type]:
    """peft type name (`LORA`, `VERA`, ...) -> its config class."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(peft_type.value): cls for peft_type, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def inject(model: nn.Module, config, adapter_name: str) -> None:
    """Insert the peft method described by `config` (a peft config object) into `model` in place."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    with warnings.catch_warnings():  # BOFT tries to build a CUDA extension and says so; its fallback is exact
        warnings.filterwarnings("ignore", message="Failed to load the CUDA extension")
        warnings.filterwarnings("ignore", message="Setting boft_n_butterfly_factor to 1")
        PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](model, config, adapter_name)


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """The peft layers of `model` (`BaseTunerLayer`s)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
