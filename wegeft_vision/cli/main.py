"""Entry point of `wegeft-vision`: parses the sub-command and turns user errors into one line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import data, demo, params, protocol, report, search, visualize

COMMANDS = {
    "demo": demo,
    "params": params,
    "data": data,
    "visualize": visualize,
    "protocol": protocol,
    "search": search,
    "report": report,
}
USER_ERRORS = (ValueError, TypeError, OSError, KeyError)
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from .lightning import run_lightning  # Lightning's parser owns these sub-commands

        return run_lightning(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[argv.index(args.command) :]  # worker processes repeat the sub-command's arguments
    try:
        return COMMANDS[args.command].run(args) or 0
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"wegeft-vision {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
