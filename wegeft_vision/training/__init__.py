"""Training on Lightning: the classification module and the callbacks that make runs replayable."""

from .callbacks import EpochCheckpoint, EpochSeed
from .module import ClassificationModule, TrainingDiverged

__all__ = ["ClassificationModule", "EpochCheckpoint", "EpochSeed", "TrainingDiverged"]
