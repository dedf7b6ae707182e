"""The LightningModule that trains any method on a timm classifier: AdamW, warmup + cosine, top-1, adapter checkpoints.

Its typed `__init__` is the config schema. A non-finite loss or trainable tensor stops training (`TrainingDiverged`).
Checkpoints keep only the trainable tensors (method parameters and head)
plus the optimizer and scheduler state; the frozen backbone is rebuilt from its name, tag and weights.
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
        self.forward_network = torch.compile(self.network) if compile else self.network
        self.strict_loading = False  # checkpoints hold only the trainable tensors
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    @property
    def backbone_tag(self) -> str:
        return backbone_tag(self.network)

    @property
    def data_config(self) -> dict[str, Any]:
        return data_config(self.network)

    def setup(self, stage: str) -> None:
        precision = self.hparams.float32_matmul_precision
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups: every trainable tensor with the weight decay, or (`no_decay_1d_and_bias`) the 1-D
        tensors, biases and PaCa's cluster map in a group of their own without it. Each group names its tensors
        (`names`)."""
        params = trainable_parameters(self.network)
        exempt = {
            name
            for name, p in params.items()
            if self.hparams.no_decay_1d_and_bias
            and (p.ndim <= 1 or name.endswith(".bias") or "cluster" in name.split("."))
        }
        groups = [
            {"names": [n for n in params if n not in exempt], "weight_decay": self.hparams.weight_decay},
            {"names": [n for n in params if n in exempt], "weight_decay": 0.0},
        ]
        return [{**g, "params": [params[n] for n in g["names"]]} for g in groups if g["names"]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_network(images)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        metric(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def on_train_epoch_start(self) -> None:
        # the schedule steps once per epoch: one value per epoch, not a log call per step
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(f"non-finite loss at epoch {self.current_epoch}, step {self.global_step}")

    def on_train_epoch_end(self) -> None:
        for name, tensor in trainable_parameters(self.network).items():  # before the epoch checkpoint is written
            if not torch.isfinite(tensor.detach()).all():
                raise TrainingDiverged(f"non-finite values in {name} after epoch {self.current_epoch}")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.parameter_groups()
        for group in groups:  # once per run: what trains, and with which weight decay
            count = sum(p.numel() for p in group["params"])
            names = ", ".join(group["names"][:6]) + (", ..." if len(group["names"]) > 6 else "")
            rank_zero_info(
                f"training {count:,} parameters in {len(group['names'])} tensors with weight decay "
                f"{group['weight_decay']:g}: {names}"
            )
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
            lr=hp.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
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
        """Only the trainable tensors, under their `network.` names: the frozen backbone is never saved."""
        prefix = kwargs.get("prefix", "")
        keep = {f"{prefix}network.{name}" for name in trainable_parameters(self.network)}
        full = super().state_dict(*args, **kwargs)
        return type(full)((k, v) for k, v in full.items() if k in keep)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Map the tensor names of checkpoints written before WeGeFT's parts were renamed (`methods.legacy`), and
        refuse a checkpoint that lacks a trainable tensor (loading is not strict: the frozen backbone is not saved)."""
        state = checkpoint["state_dict"]
        expected = set(self.state_dict())
        for name in [name for name in state if name not in expected]:
            current = "network." + current_tensor_name(self.method.method, name.removeprefix("network."), 1)
            if current in expected:
                state[current] = state.pop(name)
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trainable tensor(s) of the model, e.g. {missing[0]}")

    def save_adapter(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the adapter (safetensors + JSON sidecar) with the training settings in the sidecar."""
        settings = {k: v for k, v in self.hparams.items() if k != "method"}
        extra = {"training": settings, **(extra or {})}
        return save_adapter(self.network, path, extra=extra, backbone_overrides=self.hparams.backbone_overrides)
