"""Training on Lightning: the classification module and the callbacks that make runs replayable."""

from .callbacks import EpochSeed
from .module import ClassificationModule

__all__ = ["ClassificationModule", "EpochSeed"]
