"""Entry point of `wegeft-vision`: parses the sub-command and turns user errors into one line and a non-zero exit."""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence

from . import data, demo, import_checkpoint, params, protocol, report, search, visualize

COMMANDS = {
    "demo": demo,
    "params": params,
    "data": data,
    "visualize": visualize,
    "protocol": protocol,
    "search": search,
    "report": report,
    "import-checkpoint": import_checkpoint,
}
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, argparse.ArgumentError, pickle.UnpicklingError)
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wegeft-vision",
        description=__doc__,
        epilog="Training: `wegeft-vision fit|validate|test --help` (LightningCLI; configs compose with --config).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


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
        from ..training.cli import run_lightning  # Lightning's parser owns these sub-commands

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
    args = build_parser().parse_args(argv)
    args.argv = argv[argv.index(args.command) :]  # worker processes repeat the sub-command's arguments
    try:
        return COMMANDS[args.command].run(args) or 0
    except USER_ERRORS as err:
        if args.debug:
            raise
        return report_error(args.command, err)


if __name__ == "__main__":
    sys.exit(main())
