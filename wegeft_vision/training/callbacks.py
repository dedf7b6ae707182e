"""Callbacks that make a run replayable: the random draws of epoch k do not depend on whether the run was resumed."""

from __future__ import annotations

import os
import random

import lightning as L
import numpy as np
import torch


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
