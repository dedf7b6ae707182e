"""The LightningModule that trains any method on a timm classifier: AdamW, warmup + cosine, top-1, adapter checkpoints.

Its typed `__init__` is the config schema. A non-finite loss or trainable tensor stops training (`TrainingDiverged`).
Checkpoints keep only the trainable tensors (method parameters and head)
plus the optimizer and scheduler state; the frozen backbone is rebuilt from its name, tag and weights.

With `pack`, one module trains several grid points at once (`training.packing`): each point's tensors, optimizer
groups (its lr and weight decay), clipping and divergence are its own, and its metrics are logged as `NAME@k`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.scheduler import CosineLRScheduler
from torchmetrics.classification import MulticlassAccuracy

from ..backbones import DEFAULT_BACKBONE, backbone_tag, create_backbone, data_config
from ..methods import (
    MethodConfig,
    WeGeFTConfig,
    config_from_spec,
    inject,
    load_adapter,
    read_adapter_meta,
    save_adapter,
    trainable_parameters,
)
from ..methods.legacy import current_tensor_name
from .cluster import destroy_process_group_at_exit
from .packing import PackedNetwork

MATMUL_PRECISIONS = ("highest", "high", "medium")


class TrainingDiverged(RuntimeError):
    """The loss or a trainable tensor became non-finite: the run stops, and is a result (diverged), not an error to
    retry (the same run would diverge again)."""


class ClassificationModule(L.LightningModule):
    """Fine-tune `backbone` with `method` for `num_classes`-way classification.

    Args:
        num_classes: classes of the task (the head is created fresh).
        method: a method config, its dict form `{"method": name, **options}`, or a preset's
            `{"class_path": ..., "init_args": ...}` (what LightningCLI passes for `--model.method <preset>.yaml`).
        backbone: timm `architecture[.tag]`.
        pretrained: load the tag's weights (shipped, HF cache or hub); ignored when `weights` is given.
        weights: local weights file for the backbone.
        init_seed: seed of a random-weight backbone (neither `pretrained` nor `weights`), recorded with the adapter.
        backbone_overrides: timm architecture arguments (tiny test models: `img_size`, `depth`, ...).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        no_decay_1d_and_bias: no weight decay on 1-D tensors and biases (BitFit's parameters, the head's bias, norms
            under full fine-tuning) nor on PaCa's cluster assignment map (a `cluster` module), as the authors'
            `param_groups_weight_decay_filter`; else decay on every tensor.
        epochs: length of the cosine schedule (a search run stops earlier on the same schedule).
        warmup_epochs: linear warmup from `warmup_lr` to `lr`.
        warmup_lr: learning rate at the first epoch.
        min_lr: learning rate at the end of the cosine.
        label_smoothing: cross-entropy label smoothing.
        drop_path: stochastic depth rate of the backbone.
        compile: wrap the network in `torch.compile`.
        float32_matmul_precision: `highest` (true fp32), `high` (TF32 on GPUs that have it, as the authors' code:
            `allow_tf32 = True`) or `medium`; set for matmuls and cuDNN when the run starts.
        adapter: an adapter file (.safetensors with its sidecar) loaded onto the injected network, e.g. to `test`
            it; `method` defaults to the adapter's own, and the backbone must be the one its sidecar records.
        pack: grid points trained together, each `{lr: ..., weight_decay: ...}` (then `lr` and `weight_decay` are
            not used): one forward and backward over the same images for all of them, each point exactly as its own
            run (`training.packing`). Metrics are logged per point as `NAME@k`; a point whose loss or tensors become
            non-finite leaves the pack (`diverged`) and the others go on.
    """

    def __init__(
        self,
        num_classes: int,
        method: MethodConfig | dict[str, Any] | None = None,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        init_seed: int = 0,
        backbone_overrides: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        no_decay_1d_and_bias: bool = False,
        epochs: int = 100,
        warmup_epochs: int = 10,
        warmup_lr: float = 1e-7,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.0,
        drop_path: float = 0.1,
        compile: bool = False,
        float32_matmul_precision: str = "highest",
        adapter: str | None = None,
        pack: list[dict[str, float]] | None = None,
    ) -> None:
        super().__init__()
        saved = read_adapter_meta(adapter) if adapter is not None else None
        if method is None and saved is not None:
            method = saved["config"]
        method = WeGeFTConfig() if method is None else method
        self.method = config_from_spec(method, "model.method") if isinstance(method, dict) else method
        self.save_hyperparameters(ignore=["method"], logger=False)
        self.hparams["method"] = self.method.to_dict()  # plain JSON in checkpoints, whatever form was passed
        if float32_matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"float32_matmul_precision should be one of {MATMUL_PRECISIONS}, got {float32_matmul_precision!r}"
            )
        if epochs < 1 or not 0 <= warmup_epochs < epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs < epochs, got {epochs} and {warmup_epochs}")
        network = create_backbone(
            backbone,
            num_classes=num_classes,
            pretrained=pretrained and weights is None,
            weights=weights,
            init_seed=init_seed,
            drop_path_rate=drop_path,
            **(backbone_overrides or {}),
        )
        self.network = inject(network, self.method)
        if adapter is not None:
            architecture, tag = saved["backbone"]["architecture"], saved["backbone"]["tag"]
            recorded = f"{architecture}.{tag}"
            if architecture and tag and recorded != backbone_tag(network):
                raise ValueError(f"adapter {adapter} is for {recorded}, not {backbone_tag(network)} (model.backbone)")
            load_adapter(self.network, adapter)
        self.packed: PackedNetwork | None = None
        self.diverged: dict[int, str] = {}  # point of the pack -> why it left
        self.diverged_at: dict[int, int] = {}  # point of the pack -> the epochs it trained
        if pack is not None:
            self.points = [_point(p, i) for i, p in enumerate(pack)]
            if compile:
                raise ValueError("model.compile cannot be combined with model.pack")
            self.packed = PackedNetwork(self.network, len(self.points))
        else:
            self.points = [(lr, weight_decay)]
        self.forward_network = torch.compile(self.network) if compile else (self.packed or self.network)
        self.strict_loading = False  # checkpoints hold only the trainable tensors
        metrics = len(self.points) if self.packed is not None else 1

        def accuracy() -> torch.nn.ModuleList:
            return torch.nn.ModuleList(
                MulticlassAccuracy(num_classes=num_classes, average="micro") for _ in range(metrics)
            )

        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()

    @property
    def backbone_tag(self) -> str:
        return backbone_tag(self.network)

    @property
    def data_config(self) -> dict[str, Any]:
        return data_config(self.network)

    def setup(self, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            destroy_process_group_at_exit()
        precision = self.hparams.float32_matmul_precision
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups: every trainable tensor with the weight decay, or (`no_decay_1d_and_bias`) the 1-D
        tensors, biases and PaCa's cluster map in a group of their own without it. Each group names its tensors
        (`names`) and has its `lr`; a packed module has these groups once per point (`point` k, in pack order)."""
        names = list(self._point_tensors(0))
        exempt = {
            name
            for name, p in self._point_tensors(0).items()
            if self.hparams.no_decay_1d_and_bias
            and (p.ndim <= 1 or name.endswith(".bias") or "cluster" in name.split("."))
        }
        groups = []
        for point, (lr, weight_decay) in enumerate(self.points):
            tensors = self._point_tensors(point)
            for decay in (weight_decay, None):
                chosen = [n for n in names if (n in exempt) == (decay is None)]
                if chosen:
                    group = {"names": chosen, "weight_decay": decay or 0.0, "lr": lr, "point": point}
                    groups.append({**group, "params": [tensors[n] for n in chosen]})
        return groups

    def _point_tensors(self, point: int) -> dict[str, torch.Tensor]:
        if self.packed is None:
            return trainable_parameters(self.network)
        return self.packed.point_tensors(point)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes); a packed module's have one row per point still in the pack first."""
        return self.forward_network(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: torch.nn.ModuleList) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        if self.packed is None:
            return self._log_point(stage, "", logits, labels, smoothing, metrics[0])
        losses = [
            self._log_point(stage, f"@{k}", point_logits, labels, smoothing, metrics[k])
            for k, point_logits in zip(self.packed.active, logits, strict=True)
        ]
        if stage == "train":
            self._point_losses = [loss.detach() for loss in losses]
        return torch.stack(losses).sum()  # each point's gradient is the one of its own mean loss

    def _log_point(self, stage, suffix, logits, labels, smoothing, metric) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        metric(logits, labels)
        size = len(labels)
        self.log(f"{stage}/loss{suffix}", loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log(f"{stage}/acc{suffix}", metric, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _suffixes(self) -> list[tuple[int, str]]:
        """(point, metric suffix) of every point that still trains."""
        return [(0, "")] if self.packed is None else [(k, f"@{k}") for k in self.packed.active]

    def on_train_epoch_start(self) -> None:
        # the schedule steps once per epoch: one value per epoch, not a log call per step
        # (checkpoints of earlier versions restore groups without `point`: a single run's)
        lrs = {g.get("point", 0): g["lr"] for g in reversed(self.optimizers().param_groups)}
        for point, suffix in self._suffixes():
            self.log(f"train/lr{suffix}", lrs[point], on_step=False, on_epoch=True, sync_dist=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.packed is not None:
            for point, loss in zip(list(self.packed.active), self._point_losses, strict=True):
                if not torch.isfinite(loss).all():
                    self._leave(point, f"non-finite loss at {where}")
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(f"non-finite loss at {where}")

    def on_train_epoch_end(self) -> None:
        for point, _ in self._suffixes():  # before the epoch checkpoint is written
            for name, tensor in self._point_tensors(point).items():
                if not torch.isfinite(tensor.detach()).all():
                    reason = f"non-finite values in {name} after epoch {self.current_epoch}"
                    if self.packed is None:
                        raise TrainingDiverged(reason)
                    self._leave(point, reason)
                    break

    def _leave(self, point: int, reason: str) -> None:
        """A packed point diverged: it is a result (`diverged`), the other points go on; when none is left, the run
        is over as a single run's would be."""
        self.diverged[point] = reason
        self.diverged_at[point] = self.current_epoch + 1
        self.packed.leave(point)
        rank_zero_info(f"point {point} of the pack diverged ({reason}); {len(self.packed.active)} go on")
        if not self.packed.active:
            raise TrainingDiverged(f"every point of the pack diverged (the last: {reason})")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping per point: a packed point's gradient norm is its own run's."""
        if self.packed is None or gradient_clip_val is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for point in self.packed.active:
            tensors = [t for t in self._point_tensors(point).values() if t.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(tensors, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(tensors, gradient_clip_val)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.parameter_groups()
        for group in groups:  # once per run: what trains, and with which weight decay
            if group["point"]:
                continue  # a pack's other points train the same tensors
            count = sum(p.numel() for p in group["params"])
            names = ", ".join(group["names"][:6]) + (", ..." if len(group["names"]) > 6 else "")
            packed = f" (x {len(self.points)} points)" if self.packed is not None else ""
            rank_zero_info(
                f"training {count:,} parameters in {len(group['names'])} tensors{packed} with weight decay "
                f"{group['weight_decay']:g}: {names}"
            )
        optimizer = torch.optim.AdamW(
            [{k: g[k] for k in ("params", "weight_decay", "lr", "point")} for g in groups],
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        hp = self.hparams
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=hp.epochs,
            lr_min=hp.min_lr,
            warmup_t=hp.warmup_epochs,
            warmup_lr_init=hp.warmup_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        scheduler.step(epoch=self.current_epoch + 1)  # timm schedules by epoch index; Lightning calls at epoch end

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, under their `network.` names (a pack's as `packed.points.K.I`): the frozen
        backbone is never saved."""
        prefix = kwargs.get("prefix", "")
        if self.packed is None:
            keep = {f"{prefix}network.{name}" for name in trainable_parameters(self.network)}
        else:
            keep = {f"{prefix}packed.{name}" for name, _ in self.packed.points.named_parameters(prefix="points")}
        full = super().state_dict(*args, **kwargs)
        return type(full)((k, v) for k, v in full.items() if k in keep)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.packed is not None:  # which points left the pack, and why: they stay out on resume
            checkpoint["pack_diverged"] = {"reasons": self.diverged, "epochs": self.diverged_at}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Map the tensor names of checkpoints written before WeGeFT's parts were renamed (`methods.legacy`), and
        refuse a checkpoint that lacks a trainable tensor (loading is not strict: the frozen backbone is not saved)."""
        state = checkpoint["state_dict"]
        if self.packed is not None:
            saved = checkpoint.get("pack_diverged", {})
            self.diverged, self.diverged_at = dict(saved.get("reasons", {})), dict(saved.get("epochs", {}))
            for point in self.diverged:
                self.packed.leave(point)
        expected = set(self.state_dict())
        for name in [name for name in state if name not in expected]:
            current = "network." + current_tensor_name(self.method.method, name.removeprefix("network."), 1)
            if current in expected:
                state[current] = state.pop(name)
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trainable tensor(s) of the model, e.g. {missing[0]}")

    def save_adapter(self, path: str | Path, extra: dict[str, Any] | None = None, point: int = 0) -> Path:
        """Write the adapter (safetensors + JSON sidecar) with the training settings in the sidecar; of a packed
        module, the adapter of `point` (its lr and weight decay in the settings)."""
        settings = {k: v for k, v in self.hparams.items() if k not in ("method", "pack")}
        settings["lr"], settings["weight_decay"] = self.points[point]
        extra = {"training": settings, **(extra or {})}
        network = self.network if self.packed is None else self.packed.write_point(point)
        return save_adapter(network, path, extra=extra, backbone_overrides=self.hparams.backbone_overrides)


def _point(spec: dict[str, float], index: int) -> tuple[float, float]:
    """A pack's grid point from its `{lr, weight_decay}` mapping, refused by name when malformed."""
    if not isinstance(spec, dict) or set(spec) != {"lr", "weight_decay"}:
        raise ValueError(f"model.pack[{index}] should be {{lr: ..., weight_decay: ...}}, got {spec!r}")
    return float(spec["lr"]), float(spec["weight_decay"])
