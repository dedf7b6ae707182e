"""What a result was trained on, its setup: the backbone (with its architecture arguments), where its weights came from
and the preprocessing. `report` gives each setup tables of its own; a backbone chosen on the command line that the
recipe would build otherwise (random weights, other architecture arguments) is refused before anything is pinned.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .runner import Protocol

# settings that make a recipe build another backbone than the one named, and what undoes each
REBUILT = {"model.pretrained": "model.pretrained=true", "model.backbone_overrides": "model.backbone_overrides=null"}


class Setup(NamedTuple):
    """The columns of a results row that say what it was trained on (empty where a file lacks them)."""

    backbone: str
    weights: str
    preprocessing: str

    @property
    def slug(self) -> str:
        """A part of a file name unique to the setup: the backbone's name, then a digest of the whole setup."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.backbone.partition("(")[0])[:48].strip("-.") or "backbone"
        return f"{name}-{hashlib.sha256(chr(0).join(self).encode()).hexdigest()[:8]}"


def backbone_label(name: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The `backbone` column: `architecture[.tag]` with the timm arguments it was built with, if any (e.g.
    `vit_base_patch16_224(img_size=32,depth=2)`), so that a row never claims an architecture it did not train."""
    if not overrides:
        return name
    return f"{name}({','.join(f'{key}={value}' for key, value in overrides.items())})"


def architecture(backbone: str) -> str:
    """A `backbone` column without its pretrained tag: `vit_b.augreg(img_size=32)` -> `vit_b(img_size=32)`."""
    name, paren, arguments = backbone.partition("(")
    return name.split(".")[0] + paren + arguments


def random_init(row: Mapping[str, Any]) -> bool:
    """The row's backbone was randomly initialized (weights `random:seed<k>`)."""
    return (row.get("weights") or "").startswith("random")


def setup_of(row: Mapping[str, Any]) -> Setup:
    return Setup(*((row.get(name) or "").strip() for name in Setup._fields))


def split_setups(rows: Iterable[dict]) -> dict[Setup, list[dict]]:
    """The rows of each setup, in file order, setups in order of appearance.

    A random-init control (the demo's `linear_random`) goes with every pretrained setup of its architecture and
    preprocessing, the rows it is a control for; a random-init row with no such setup forms a setup of its own.
    """
    rows = list(rows)
    homes: dict[tuple[str, str], list[Setup]] = {}
    for row in rows:
        if not random_init(row):
            setup = setup_of(row)
            mates = homes.setdefault((architecture(setup.backbone), setup.preprocessing), [])
            if setup not in mates:
                mates.append(setup)
    groups: dict[Setup, list[dict]] = {}
    for row in rows:
        setup = setup_of(row)
        targets = [setup]
        if random_init(row):
            targets = homes.get((architecture(setup.backbone), setup.preprocessing), targets)
        for target in targets:
            groups.setdefault(target, []).append(row)
    return groups


def setup_labels(setups: Iterable[Setup]) -> dict[Setup, str]:
    """Each setup in words, for a title: backbone and weights, and the preprocessing where two setups share those."""
    setups = list(setups)
    shared = Counter(setup[:2] for setup in setups)
    labels = {}
    for setup in setups:
        parts = [setup.backbone or "backbone not recorded", f"weights {setup.weights}" if setup.weights else ""]
        if shared[setup[:2]] > 1:
            parts.append(f"preprocessing {setup.preprocessing or 'not recorded'}")
        labels[setup] = ", ".join(part for part in parts if part)
    return labels


def check_chosen_backbone(protocol: Protocol, chosen: Mapping[str, Any]) -> None:
    """Refuse a backbone chosen on the command line (`model.backbone` in `chosen`, the request's settings) that the
    preset's recipe would build with random weights or with architecture arguments of its own: its rows would name a
    backbone that was not trained. Keys the user set as well count as meant, and so do a method's own settings (a
    random-init control such as the demo's `linear_random`).

    Raises:
        ValueError: one line naming the chosen backbone, the file and the settings at fault, and the way out.
    """
    if "model.backbone" not in chosen:
        return
    firsts: dict[str, Any] = {}
    for unit in protocol.units:
        firsts.setdefault(unit.benchmark, unit)
    for benchmark, unit in firsts.items():
        overrides = protocol.preset_for(unit).overrides  # the recipe's settings without the method's own
        model = replace(protocol.sample_config(unit), overrides=overrides).resolved.model
        faults = {}
        if not model.pretrained and model.weights is None and not {"model.pretrained", "model.weights"} & set(chosen):
            faults["model.pretrained"] = "false"
        if model.backbone_overrides and "model.backbone_overrides" not in chosen:
            faults["model.backbone_overrides"] = (
                "{" + ", ".join(f"{k}: {v}" for k, v in model.backbone_overrides.items()) + "}"
            )
        if not faults:
            continue
        where = protocol.preset.path if set(faults) & set(overrides) else protocol.preset.fit_config
        settings = " and ".join(f"{key}={value}" for key, value in faults.items())
        way_out = " ".join(f"--set {REBUILT[key]}" for key in faults)
        raise ValueError(
            f"model.backbone={chosen['model.backbone']} (--backbone): {where} builds the {benchmark} runs' backbone "
            f"with {settings}, so the results would name a backbone they did not train; add {way_out} to train it "
            "as published, or choose a preset whose recipe loads pretrained weights (e.g. --config paper)"
        )
