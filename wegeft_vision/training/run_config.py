"""One training run's configuration, typed: what the protocol hands to training and what `--dry-run` reads.

A `RunConfig` is a recipe (a LightningCLI fit config, `configs/fit/*.yaml`) with `section.key` settings on top, a
method preset, the grid point (lr, weight decay), the seed, a task's data arguments and the protocol stage. Its
`lightning_config` is the run's complete LightningCLI configuration as a dict (the run folder's `config.yaml`, which
`wegeft-vision fit --config` replays); `resolved` parses it once, building nothing, and the typed views below read the
values training will use. `instantiate` builds the model, the data and the trainer. `fit|validate|test` stay
LightningCLI for users; the protocol builds no command line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ..data.transforms import Preprocessing
    from ..methods import MethodConfig
    from .lightning_cli import WeGeFTCLI

STAGES = ("search", "final")
# What every run sets itself (`RunConfig.lightning_config`): a recipe override of one of these would be replaced.
SET_PER_RUN = {
    "model.lr": "the grid's lr",
    "model.weight_decay": "the grid's weight_decay",
    "model.pack": "--pack",
    "model.method": "the method's preset",
    "seed_everything": "--seeds",
    "data.dataset": "--tasks",
    "data.root": "--data-root",
    "data.manifest": "--tasks",
    "data.splits_dir": "--splits-dir",
    "data.stage": "the protocol's stage",
    "data.seed": "--seeds",
    "data.final_includes_val": "--final-includes-val",
    "trainer.default_root_dir": "--out",
}


def check_overrides(overrides: Mapping[str, Any], where: str) -> None:
    """Refuse an override of something every run sets itself (or of a part of it, such as
    `model.method.init_args.rank`, which the run's own setting would replace), naming the key and where to change it
    instead."""
    for key in overrides:
        owner = next((k for k in SET_PER_RUN if key == k or key.startswith(f"{k}.")), None)
        if owner is not None:
            raise ValueError(f"{where} {key}={overrides[key]!r}: every run sets {owner} from {SET_PER_RUN[owner]}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides one run's result.

    Attributes:
        recipe: the LightningCLI fit config of the training recipe.
        method: the method preset (`configs/method/*.yaml`: class_path and init_args).
        data: the task's `BenchmarkDataModule` arguments (`data.tasks.Task.data_arguments`).
        stage: `search` (train -> val, validated every epoch) or `final` (train(+val) -> test, evaluated once).
        lr, weight_decay: the grid point.
        seed: seed of data order, initialization and drop-path draws.
        overrides: `section.key: value` settings on top of the recipe.
        stop_epoch: a search run stops after this many epochs of its schedule (None: the whole schedule).
        final_includes_val: the FGVC final trains on train+val.
        devices: devices of the run (DDP over several; the recipe's batch is the global one).
        pack: grid points (lr, weight decay) trained together in this run (`model.pack`, `training.packing`); empty
            for a run of the one point `lr`, `weight_decay`.
    """

    recipe: Path
    method: Path
    data: Mapping[str, str]
    stage: str
    lr: float
    weight_decay: float
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    stop_epoch: int | None = None
    final_includes_val: bool = False
    devices: int = 1
    pack: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {', '.join(STAGES)}")
        if self.devices < 1:
            raise ValueError(f"devices should be at least 1, got {self.devices}")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "resolved"}  # a parse is not worth pickling

    def identity(self) -> dict[str, Any]:
        """The fields as plain JSON values (paths as text)."""
        return {
            "recipe": str(self.recipe),
            "method": str(self.method),
            "data": dict(self.data),
            "stage": self.stage,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "overrides": dict(self.overrides),
            "stop_epoch": self.stop_epoch,
            "final_includes_val": self.final_includes_val,
            "devices": self.devices,
            **({"pack": [list(point) for point in self.pack]} if self.pack else {}),
        }

    def lightning_config(
        self, run_dir: Path | None = None, progress: bool = False, checkpoint_every: int = 1
    ) -> dict[str, Any]:
        """The run's LightningCLI configuration: the recipe, the overrides, then what the run sets itself.

        Args:
            run_dir: the run folder (its log, `config.yaml` and epoch checkpoints); None for a parse-only check.
            progress: Lightning's progress bar (rich).
            checkpoint_every: epochs between the checkpoints a killed run resumes from.
        """
        config = yaml.safe_load(Path(self.recipe).read_text()) or {}
        for key, value in self.overrides.items():
            *sections, name = key.split(".")
            node = config
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
        config["seed_everything"] = self.seed
        model, data, trainer = (config.setdefault(section, {}) for section in ("model", "data", "trainer"))
        model.update(method=yaml.safe_load(Path(self.method).read_text()), lr=self.lr, weight_decay=self.weight_decay)
        if self.pack:
            model["pack"] = [{"lr": lr, "weight_decay": wd} for lr, wd in self.pack]
        data.update(self.data, stage=self.stage, seed=self.seed, final_includes_val=self.final_includes_val)
        trainer.update(
            # search: validated every epoch (best and last both recorded); final: nothing evaluated until the end
            limit_val_batches=1.0 if self.stage == "search" else 0,
            check_val_every_n_epoch=1,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            enable_progress_bar=progress,
        )
        if self.stop_epoch is not None:
            trainer["max_epochs"] = self.stop_epoch
        if self.devices > 1:
            trainer.update(devices=self.devices, strategy="ddp_spawn")
        callbacks = list(trainer.get("callbacks") or [])
        if run_dir is not None:
            trainer["default_root_dir"] = str(run_dir)
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "", "version": "", "flush_logs_every_n_steps": 1},
            }
            callbacks.append(
                {
                    "class_path": "wegeft_vision.training.EpochCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_epochs": checkpoint_every},
                }
            )
        if progress:
            callbacks.append({"class_path": "lightning.pytorch.callbacks.RichProgressBar"})
        trainer["callbacks"] = callbacks
        return config

    @cached_property
    def resolved(self) -> Any:
        """The parsed configuration (jsonargparse namespace: `seed_everything`, `model`, `data`, `trainer`), with the
        class count linked from the task's manifest; nothing is built and no data is read.

        Raises:
            ValueError: the configuration does not parse; the message names the recipe, the method preset, the
                overrides and the key at fault.
        """
        from .lightning_cli import parse_config

        try:
            return parse_config(self.lightning_config())
        except argparse.ArgumentError as err:
            message = " ".join(str(err).split())
            raise ValueError(
                f"the run configuration of {self.method} on {self.data.get('dataset')} ({self.recipe}, overrides "
                f"{dict(self.overrides)}) does not parse: {message}"
            ) from err

    @property
    def schedule_epochs(self) -> int:
        """The length of the learning-rate schedule (a search run stops earlier on it)."""
        return int(self.resolved.model.epochs)

    @property
    def epochs(self) -> int:
        """The epochs this run trains."""
        return self.stop_epoch if self.stop_epoch is not None else int(self.resolved.trainer.max_epochs)

    @property
    def batch_size(self) -> int:
        """The global training batch (split over `devices`)."""
        return int(self.resolved.data.batch_size)

    @property
    def backbone(self) -> str:
        return str(self.resolved.model.backbone)

    @property
    def data_config(self) -> dict[str, Any]:
        """The backbone's data config (size, interpolation, mean, std) at the size the run builds it with."""
        from ..backbones import data_config

        overrides = self.resolved.model.backbone_overrides or {}
        return data_config(self.backbone, img_size=overrides.get("img_size"))

    def preprocessing(self, layout: str) -> Preprocessing:
        """The preprocessing pipelines of the run's data preset for a task of `layout`."""
        from ..data.transforms import preprocessing

        return preprocessing(self.resolved.data.preset, self.data_config, layout)

    @property
    def method_config(self) -> MethodConfig:
        """The method as its config object (every hyper-parameter resolved)."""
        from ..methods import config_from_spec

        return config_from_spec(_plain(self.resolved.model.method), "model.method")

    def check_method(self, label: str | None = None) -> None:
        """Build the method for real against the run's backbone, on the meta device (the timm architecture with the
        run's `backbone_overrides`, no weights, no memory), so that every check a run makes of its method preset
        happens now, before anything is pinned. Each (backbone, overrides, method) is built once per process.

        Args:
            label: the method's label in the protocol preset, named in the message.

        Raises:
            ValueError: one line naming the method (label and preset file), the option and its value; or the
                backbone, when it cannot be built.
        """
        from ..methods import METHODS, config_from_spec

        where = f"method {label} ({self.method})" if label else f"method preset {self.method}"
        spec = _plain(self.resolved.model.method)
        overrides = dict(self.resolved.model.backbone_overrides or {})
        key = json.dumps([self.backbone, overrides, spec], sort_keys=True, default=str)
        if key in _BUILT:
            return
        if not isinstance(spec, dict):  # an empty preset would train the module's default method without a word
            raise ValueError(f"{where}: expected a mapping with `class_path` and `init_args`, got {spec!r}")
        try:
            config = config_from_spec(spec, where)
            _build_method(self.backbone, overrides, config)
        except _BackboneError as error:
            raise ValueError(
                f"model.backbone {self.backbone} (backbone_overrides {overrides}, recipe {self.recipe}) cannot be "
                f"built: {error}"
            ) from error
        except Exception as error:  # noqa: BLE001 - whatever stops the method building would stop each of its runs
            detail = " ".join(str(error.args[0] if isinstance(error, KeyError) else error).split())
            detail = detail.removeprefix(f"{where}: ")
            kind, sep, rest = detail.partition(": ")
            raise ValueError(f"{where}: {rest if sep and kind in METHODS else detail}") from error
        _BUILT.add(key)

    def packing_refusal(self) -> str | None:
        """Why this run's method cannot train packed (`training.packing.packable` on the run's backbone, built on the
        meta device as `check_method` builds it), or None."""
        from ..methods import config_from_spec
        from .packing import packable

        spec = _plain(self.resolved.model.method)
        overrides = dict(self.resolved.model.backbone_overrides or {})
        return packable(_build_method(self.backbone, overrides, config_from_spec(spec, "model.method")))

    @property
    def precision(self) -> str:
        """The trainer's precision, with the fp32 matmul precision when it is not true fp32."""
        precision = str(self.resolved.trainer.precision)
        matmul = self.resolved.model.float32_matmul_precision
        return precision if matmul == "highest" else f"{precision} (fp32 matmuls: {matmul})"

    def instantiate(self, run_dir: Path, progress: bool = False, checkpoint_every: int = 1) -> WeGeFTCLI:
        """The LightningCLI of the run with its model, datamodule and trainer built (nothing trained yet)."""
        from .lightning_cli import build_cli

        return build_cli(self.lightning_config(run_dir, progress, checkpoint_every))


_BUILT: set[str] = set()  # (backbone, overrides, method) built without error in this process


class _BackboneError(Exception):
    """The backbone itself could not be built: not the method's fault."""


def _build_method(backbone: str, overrides: dict[str, Any], config: MethodConfig) -> Any:
    """`inject(backbone, config)` with the backbone on the meta device; again with real (random, CPU) tensors when
    the method reads the weights while it builds (peft's SVD-initialised kinds cannot on the meta device). Returns
    the injected model."""
    import torch

    from ..backbones import create_backbone
    from ..methods import inject

    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = create_backbone(backbone, **overrides)
        except Exception as error:  # noqa: BLE001 - timm's own errors for an unknown name or a bad override
            raise _BackboneError(f"{type(error).__name__}: {error}") from error
        try:
            return inject(model, config)  # outside the device context: new tensors follow the weights' device
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise


def _plain(value: Any) -> Any:
    """A jsonargparse namespace (a method preset) as plain dicts."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
