"""Training on Lightning: the classification module (the search-then-final protocol builds on it)."""

from .module import ClassificationModule

__all__ = ["ClassificationModule"]
