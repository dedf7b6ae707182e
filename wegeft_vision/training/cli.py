"""The LightningCLI over `ClassificationModule` and `BenchmarkDataModule`: `wegeft-vision fit|validate|test`, and the
configuration of every protocol run (one run = one LightningCLI configuration).

Configs compose as in any LightningCLI (`--config a.yaml --config b.yaml`, `--model.method configs/method/x.yaml`,
`--print_config`). The class count comes from the dataset's manifest; the preprocessing from the model's backbone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..data import load_manifest, read_manifest
from ..data.datamodule import BenchmarkDataModule
from ..data.folders import is_folder_ref, open_folder
from .module import ClassificationModule

SUBCOMMANDS = ("fit", "validate", "test")


def num_classes_of(dataset: str, manifest: str | None) -> int:
    """Classes of `dataset` according to its manifest (the bundled one unless `manifest` is given; a folder's own)."""
    if is_folder_ref(dataset):
        return open_folder(dataset).num_classes
    return (read_manifest(manifest) if manifest else load_manifest(dataset)).num_classes


class WeGeFTCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(("data.dataset", "data.manifest"), "model.num_classes", compute_fn=num_classes_of)
        parser.link_arguments("model.data_config", "data.data_config", apply_on="instantiate")


class ParseOnlyCLI(WeGeFTCLI):
    """Parses and checks a configuration without building anything (no model, no data, no trainer)."""

    def instantiate_classes(self) -> None:
        pass


def build_cli(argv: Sequence[str], run: bool = False, instantiate: bool = True) -> WeGeFTCLI:
    """The CLI for `argv`: with `run`, a sub-command (fit, validate or test) and its arguments, executed; without,
    the arguments only, and the model, datamodule and trainer instantiated for the caller (the protocol's runs), or,
    with `instantiate=False`, only parsed (its `parser` then checks further argument lists).

    Raises:
        argparse.ArgumentError: an unknown option, or a value of the wrong type (the message names the key).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is passed on purpose
        return (WeGeFTCLI if instantiate else ParseOnlyCLI)(
            ClassificationModule,
            BenchmarkDataModule,
            args=list(argv),
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "wegeft-vision", "exit_on_error": False},  # errors are raised; main() reports
        )


def run_lightning(argv: Sequence[str]) -> int:
    """Run a LightningCLI sub-command; `argv` starts with fit, validate or test."""
    build_cli(argv, run=True)
    return 0
