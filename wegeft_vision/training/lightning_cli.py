"""The LightningCLI over `ClassificationModule` and `BenchmarkDataModule`: `wegeft-vision fit|validate|test` for users,
and the parser and builder behind every protocol run's `RunConfig` (one run = one LightningCLI configuration).

Configs compose as in any LightningCLI (`--config a.yaml --config b.yaml`, `--model.method configs/method/x.yaml`,
`--print_config`). The class count comes from the task's manifest; the preprocessing from the model's backbone.
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..data.datamodule import BenchmarkDataModule
from ..data.tasks import task_manifest
from .cluster import cluster_environment
from .module import ClassificationModule


def num_classes_of(dataset: str, manifest: str | None) -> int:
    """Classes of `dataset` according to its manifest (the bundled one unless `manifest` is given; a folder's own)."""
    return task_manifest(dataset, manifest).num_classes


class WeGeFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(("data.dataset", "data.manifest"), "model.num_classes", compute_fn=num_classes_of)
        parser.link_arguments("model.data_config", "data.data_config", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with the cluster environment chosen (`cluster.cluster_environment`) unless the configuration
        names plugins of its own."""
        if not self._get(self.config_init, "trainer", default={}).get("plugins"):
            kwargs.setdefault("plugins", [cluster_environment()])
        return super().instantiate_trainer(**kwargs)


class ParseOnlyCLI(WeGeFTCLI):
    """Parses and checks a configuration without building anything (no model, no data, no trainer)."""

    def instantiate_classes(self) -> None:
        pass


def build_cli(args: Sequence[str] | dict[str, Any], run: bool = False, instantiate: bool = True) -> WeGeFTCLI:
    """The CLI for `args`: with `run`, a sub-command (fit, validate or test) and its arguments, executed; without,
    a configuration (a command line's arguments or a `RunConfig`'s dict), and the model, datamodule and trainer
    instantiated for the caller, or, with `instantiate=False`, only parsed.

    Raises:
        argparse.ArgumentError: an unknown option, or a value of the wrong type (the message names the key).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is passed on purpose
        return (WeGeFTCLI if instantiate else ParseOnlyCLI)(
            ClassificationModule,
            BenchmarkDataModule,
            args=args if isinstance(args, dict) else list(args),
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "wegeft-vision", "exit_on_error": False},  # errors are raised; main() reports
        )


_PARSERS: list[LightningArgumentParser] = []  # the parser of the first parse, kept: building one costs about a second


def parse_config(config: dict[str, Any]) -> Any:
    """Parse a run configuration (nothing built, no data read) into its namespace, with one parser per process.

    Raises:
        argparse.ArgumentError: an unknown key, or a value of the wrong type (the message names the key).
    """
    if not _PARSERS:
        seeding = logging.getLogger("lightning.fabric.utilities.seed")  # the CLI seeds when it parses: not news here
        level = seeding.level
        seeding.setLevel(logging.WARNING)
        try:
            cli = build_cli(config, instantiate=False)
        finally:
            seeding.setLevel(level)
        _PARSERS.append(cli.parser)
        return cli.config
    return _PARSERS[0].parse_object(config)


# jsonargparse's words for a failed link (the class count read from the task): the option and the reason are what count
_LINK_FAILURE = re.compile(
    r"Call to compute_fn of link '\w+\(([\w.]+)[^']*' with args \((.*?), .*?\) failed: (.*)", re.S
)


def run_lightning(argv: Sequence[str]) -> int:
    """Run a LightningCLI sub-command; `argv` starts with fit, validate or test.

    Raises:
        argparse.ArgumentError: a bad option or value; a failed link names the option and its value.
    """
    try:
        build_cli(argv, run=True)
    except argparse.ArgumentError as err:
        found = _LINK_FAILURE.match(str(err))
        if found is None:
            raise
        option, value, reason = found.groups()
        raise argparse.ArgumentError(None, f"--{option} {value}: {reason}") from err
    return 0
