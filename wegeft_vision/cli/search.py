"""`wegeft-vision search`: search workers only; same options as `protocol`, no selection and no final runs.

Start one per GPU or machine against a shared storage (`--storage postgresql://...` or `journal:/shared/path.log`),
e.g. from a SLURM array; then `wegeft-vision protocol` with the same options selects and runs the finals.
"""

from .protocol import add_parser
from .protocol import run_search as run

__all__ = ["add_parser", "run"]
