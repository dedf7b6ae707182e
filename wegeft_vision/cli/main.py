"""Entry point of `wegeft-vision`: parses the sub-command and turns user errors into one line and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import pickle
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple, NoReturn


class Command(NamedTuple):
    """A sub-command: the module holding its `add_parser(parser)` and `run(args)`, and its line in `--help`."""

    module: str
    summary: str


# Only the chosen sub-command's module is imported (as pip does), and each imports torch, timm, Lightning and Optuna
# in its `run` alone, so `--help`, `--version` and usage errors answer without loading any of them.
COMMANDS = {
    "demo": Command(
        "demo", "run the whole main job on the shipped pretrained mini-ViT: protocol, report, heatmaps (offline, CPU)"
    ),
    "params": Command("params", "print the trainable parameters (excluding the head) of each method"),
    "data": Command("data", "list, fetch, check or generate benchmark data (VTAB-1k, FGVC, synthetic shapes)"),
    "visualize": Command(
        "visualize", "write WeGeFT token-clustering heatmaps (and localization scores) of a saved adapter"
    ),
    "protocol": Command(
        "protocol",
        "run the search-then-final protocol (search, selection on val, final on test) and append to OUT/results.csv",
    ),
    "search": Command(
        "search", "run search workers only (the grid of each task x method x seed) against a shared study storage"
    ),
    "report": Command(
        "report", "tabulate results.csv files: Markdown and CSV tables and an accuracy-vs-parameters plot per benchmark"
    ),
    "import-checkpoint": Command(
        "import_checkpoint",
        "convert an adapter checkpoint of the authors' code (last.pth.tar) into an adapter file with its sidecar",
    ),
}
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, argparse.ArgumentError, pickle.UnpicklingError)
LIGHTNING_COMMANDS = ("fit", "validate", "test")


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported as one line (like every other user error) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """`--version`: the installed distribution's version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib.metadata import PackageNotFoundError

        import wegeft_vision

        try:
            version = wegeft_vision.__version__
        except PackageNotFoundError:
            parser.error("no installed wegeft-vision distribution to read the version of (pip install .)")
        print(f"{parser.prog} {version}")
        parser.exit()


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on a command line (the first word that is not a top-level option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `wegeft-vision` parser; only `command`'s own options are added (importing its module alone)."""
    parser = Parser(
        prog="wegeft-vision",
        description=__doc__,
        epilog="Training: `wegeft-vision fit|validate|test --help` (LightningCLI; configs compose with --config).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=summary)
            continue
        module = _module(name)
        module.add_parser(sub.add_parser(name, help=summary, description=module.__doc__))
    return parser


def _module(command: str) -> ModuleType:
    return importlib.import_module(f".{COMMANDS[command].module}", __package__)


def report_error(command: str, error: BaseException) -> int:
    """One line on stderr naming what is wrong (multi-line messages folded), and the exit code of a user error."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"wegeft-vision {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    command = argv[1:] if debug else argv
    if command and command[0] in LIGHTNING_COMMANDS:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from ..training import TrainingDiverged
        from ..training.lightning_cli import run_lightning  # Lightning's parser owns these sub-commands

        try:
            return run_lightning(command)
        except TrainingDiverged as err:
            if debug:
                raise
            print(f"wegeft-vision {command[0]}: training diverged: {err}", file=sys.stderr)
            return 1
        except (*USER_ERRORS, MisconfigurationException) as err:
            if debug:
                raise
            return report_error(command[0], err)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    try:
        return _module(args.command).run(args) or 0
    except USER_ERRORS as err:
        if args.debug:
            raise
        return report_error(args.command, err)


if __name__ == "__main__":
    sys.exit(main())
