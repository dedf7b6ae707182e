"""`wegeft-vision --help`, `--version`, `COMMAND --help` and usage errors start without torch or timm (the package root
and the command import lazily), and the package root still offers its public names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import wegeft_vision
from wegeft_vision.cli.main import COMMANDS

HEAVY = ("torch", "timm")


def start(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime -m wegeft_vision.cli ARGV`: the process, and the names of the modules it imported."""
    command = [sys.executable, "-X", "importtime", "-m", "wegeft_vision.cli", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("import time:")]


def test_help_lists_every_command_without_importing_torch():
    result, modules = start("--help")
    assert result.returncode == 0 and not heavy(modules), heavy(modules)
    assert "wegeft_vision.cli.main" in modules  # the log is read right
    for name, command in COMMANDS.items():
        assert name in result.stdout and command.summary[:40] in " ".join(result.stdout.split())


def test_version_is_the_installed_distributions():
    result, modules = start("--version")
    assert result.returncode == 0 and not heavy(modules), heavy(modules)
    assert result.stdout == f"wegeft-vision {version('wegeft-vision')}\n"
    assert wegeft_vision.__version__ == version("wegeft-vision")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_without_importing_torch(name):
    result, modules = start(name, "--help")
    assert result.returncode == 0 and not heavy(modules), heavy(modules)
    assert result.stdout.startswith(f"usage: wegeft-vision {name}")
    module = importlib.import_module(f"wegeft_vision.cli.{COMMANDS[name].module}")
    assert module.__doc__.split()[:6] == result.stdout.split("\n\n")[1].split()[:6]  # its own options and text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "wegeft-vision: error: the following arguments are required: COMMAND"),
        (["nonsense"], "wegeft-vision: error: argument COMMAND: invalid choice: 'nonsense'"),
        (["data", "check"], "wegeft-vision data check: error: the following arguments are required: target"),
        (["report", "--stage", "best", "r.csv"], "wegeft-vision report: error: argument --stage: invalid choice"),
        (
            ["visualize", "--out", "x"],
            "wegeft-vision visualize: error: the following arguments are required: --adapter",
        ),
    ],
)
def test_usage_errors_are_one_line_exit_2_without_torch(argv, message):
    result, modules = start(*argv)
    assert result.returncode == 2 and not heavy(modules), heavy(modules)
    (line,) = errors(result)
    assert line.startswith(message), line
    assert line.endswith("--help)") and not result.stdout


def test_user_error_of_a_run_is_still_one_line(tmp_path):
    result, _ = start("report", str(tmp_path / "missing.csv"))
    (line,) = errors(result)
    assert result.returncode == 2 and line.startswith("wegeft-vision report: error:") and "missing.csv" in line


def test_package_root_imports_nothing_heavy_and_still_offers_its_names():
    code = "import sys, wegeft_vision; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout == "[]\n"
    for name in wegeft_vision.__all__:
        assert getattr(wegeft_vision, name) is not None and name in dir(wegeft_vision)
    assert wegeft_vision.WeGeFTConfig is wegeft_vision.methods.WeGeFTConfig
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        wegeft_vision.nope  # noqa: B018


def test_type_checkers_see_every_lazy_name():
    """The `TYPE_CHECKING` imports of the root name the same names as its lazy table (`__all__`)."""
    tree = ast.parse(Path(wegeft_vision.__file__).read_text())
    (guard,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    imported = {alias.name for node in guard.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert imported == set(wegeft_vision.__all__)


def test_literal_choices_match_the_package():
    """The choices the commands spell out (to build their parsers without importing the data package)."""
    from wegeft_vision.cli import data, report, visualize
    from wegeft_vision.data import synthetic
    from wegeft_vision.data.registry import FGVC, STAGES, VTAB1K

    assert data.SYNTHETIC_TASKS == tuple(synthetic.TASKS)
    assert set(report.STAGES) == set(STAGES)
    assert visualize.BENCHMARKS == (VTAB1K, FGVC)
