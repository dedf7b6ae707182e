"""Callbacks that make a run resumable and replayable: an atomic epoch checkpoint, and random draws of epoch k that do
not depend on whether the run was resumed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint


class EpochSeed(L.Callback):
    """Reseed torch, NumPy and `random` at the start of every training epoch from (seed, epoch, rank).

    Drop-path and dropout draw from the global generators; with this callback a run resumed from the checkpoint of
    epoch k makes the same draws as an uninterrupted run (the data order is per-epoch already, see
    `data.datamodule.EpochShuffle`).

    Args:
        seed: base seed; default: the one given to `seed_everything` (`PL_GLOBAL_SEED`), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = (base * 1_000_003 + trainer.current_epoch * 7_919 + trainer.global_rank) % 2**32
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)


class EpochCheckpoint(Checkpoint):
    """Write `dirpath/last.ckpt` at the end of every `every_n_epochs`-th training epoch (and of the last one).

    The checkpoint is written to `last.ckpt.partial` at the epoch's end (after the module's own epoch-end hook, which
    stops a diverged run before its state is saved) and moved over `last.ckpt` in one `os.replace` once the epoch's
    metrics are logged (Lightning logs them after the epoch-end hooks). A kill at any moment leaves a whole
    `last.ckpt` whose epochs are all in the log; what follows it is trained again on resume.

    Args:
        dirpath: the folder of `last.ckpt`.
        every_n_epochs: epochs between checkpoints (a run resumes from the last one written).
    """

    FILE_NAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs should be at least 1, got {every_n_epochs}")
        self.path = Path(dirpath) / self.FILE_NAME
        self.partial = self.path.with_name(self.FILE_NAME + ".partial")
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        if epochs % self.every_n_epochs and epochs != trainer.max_epochs:
            return
        trainer.save_checkpoint(self.partial)  # every rank takes part; global rank 0 writes
        if trainer.is_global_zero:
            with self.partial.open("rb") as handle:
                os.fsync(handle.fileno())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._promote(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._promote(trainer)

    def _promote(self, trainer: L.Trainer) -> None:
        """The previous epoch's metrics are logged by now: its checkpoint becomes the one to resume from."""
        if trainer.is_global_zero and self.partial.is_file():
            os.replace(self.partial, self.path)
