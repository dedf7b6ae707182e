"""The `wegeft-vision` command: one module per sub-command, dispatched from `main`."""

from .main import main

__all__ = ["main"]
