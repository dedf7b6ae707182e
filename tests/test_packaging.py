"""The package as users install it: a wheel carries the code, the presets and configs (`configs/`) and the split
manifests (`data_splits/`), and an installed copy runs the demo, a paper dry-run and the data commands from any folder,
with nothing from the source checkout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest

from wegeft_vision.data.registry import VTAB_TASKS

REPO = Path(__file__).resolve().parents[1]
FGVC_REFERENCE = REPO.parent / "shared" / "reference" / "fgvc_splits"
NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "lightning_logs")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_list_names_every_package():
    setuptools = pyproject()["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "wegeft_vision").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | set(mapped)
    assert mapped == {"wegeft_vision.configs": "configs", "wegeft_vision.data_splits": "data_splits"}


def test_bundled_folders_are_the_checkouts_in_an_editable_install():
    assert Path(str(files("wegeft_vision.configs"))) == REPO / "configs"
    assert Path(str(files("wegeft_vision.data_splits"))) == REPO / "data_splits"


@dataclass(frozen=True)
class Installed:
    """A wheel of the checkout installed with `pip install --target`, and how to run it from a folder elsewhere."""

    wheel: Path
    site: Path
    python: Path  # an interpreter that sees the dependencies but not the editable install of the checkout
    workdir: Path

    def run(self, *argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "WEGEFT_DATA_SPLITS"}
        env |= {"PYTHONPATH": str(self.site), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.workdir / "hub")}
        command = [self.python, *map(str, argv)]
        return subprocess.run(command, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout)

    def wegeft_vision(self, *argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The installed console script (run by `python`, so that worker processes use it too)."""
        result = self.run(self.site / "bin" / "wegeft-vision", *argv, timeout=timeout)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result


def _interpreter_without_the_checkout(folder: Path) -> Path:
    """A virtual environment whose site-packages points at this one's by a `.pth` path line: the dependencies are
    importable, but the `.pth` hooks there (the editable install's finder) never run."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))  # builds never touch the checkout
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", source]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("wegeft_vision-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True, timeout=300)
    (root / "elsewhere").mkdir()
    return Installed(wheel, site, _interpreter_without_the_checkout(root / "venv"), root / "elsewhere")


@pytest.mark.slow
def test_the_wheel_carries_code_configs_and_manifests(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = {
        f"wegeft_vision/{p.relative_to(REPO / 'wegeft_vision')}" for p in (REPO / "wegeft_vision").rglob("*.py")
    }
    expected |= {f"wegeft_vision/{p.relative_to(REPO)}" for p in (REPO / "configs").rglob("*.yaml")}
    expected |= {f"wegeft_vision/{p.relative_to(REPO)}" for p in (REPO / "data_splits").glob("*.yaml")}
    expected |= {"wegeft_vision/backbones/weights/vit_mini_patch8_32.glyphs.safetensors"}
    assert sorted(expected - names) == []
    assert not [name for name in names if name.startswith(("configs/", "data_splits/", "tests/"))]


@pytest.mark.slow
def test_the_installed_copy_is_the_one_that_runs(installed):
    probe = (
        "import json, sys, wegeft_vision.cli.main, wegeft_vision.protocol.preset as p, wegeft_vision.data.manifests;"
        "print(json.dumps([p.CONFIG_DIR.as_posix(), wegeft_vision.data.manifests.default_manifest_dir().as_posix(),"
        "[getattr(v, '__file__', None) for k, v in sys.modules.items() if k.startswith('wegeft_vision')]]))"
    )
    result = installed.run("-c", probe)
    assert result.returncode == 0, result.stderr
    configs, manifests, modules = json.loads(result.stdout)
    package = installed.site / "wegeft_vision"
    assert Path(configs) == package / "configs" and Path(manifests) == package / "data_splits"
    assert modules and all(Path(path).is_relative_to(package) for path in modules if path), modules
    version = installed.wegeft_vision("--version").stdout
    assert version == f"wegeft-vision {installed.wheel.name.split('-')[1]}\n"


@pytest.mark.slow
def test_installed_quick_demo(installed):
    out = installed.workdir / "demo"
    printed = installed.wegeft_vision("demo", "--quick", "--out", out, "--no-progress", timeout=900).stdout
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    methods = {"wegeft", "lora", "bitfit", "linear", "linear_random"}
    assert {(r["method"], r["stage"]) for r in rows} == {(m, s) for m in methods for s in ("search", "final")}
    assert (out / "report" / "custom_final.md").is_file() and (out / "heatmaps" / "best_clusters.csv").is_file()
    assert "| shapes_position | Structured | Mean |" in printed and "demo done in" in printed


@pytest.mark.slow
def test_installed_paper_dry_run(installed):
    out = installed.workdir / "paper"
    argv = ["--config", "paper", "--benchmark", "vtab-1k", "--tasks", "all", "--methods", "wegeft", "lora"]
    printed = installed.wegeft_vision("protocol", *argv, "--dry-run", "--out", out).stdout
    plan = json.loads((out / "plan.json").read_text())
    assert {(run["task"], run["method"]) for run in plan} == {(t, m) for t in VTAB_TASKS for m in ("wegeft", "lora")}
    assert {run["epochs"] for run in plan if run["stage"] == "search"} == {50} and "950 runs" in printed


@pytest.mark.slow
def test_installed_data_check_reads_the_bundled_manifest(installed):
    from PIL import Image

    task = installed.workdir / "vtab" / "kitti"
    lines = {}
    for split, first, count in (("train800", 0, 4), ("val200", 4, 2), ("test", 6, 3)):
        lines[split] = [f"images/{i:02d}.png {i % 4}\n" for i in range(first, first + count)]
        for i in range(first, first + count):
            (task / "images").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(task / "images" / f"{i:02d}.png")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, entries in lines.items():
        (task / f"{split}.txt").write_text("".join(entries))
    argv = ["vtab-1k/kitti", "--root", task.parent, "--allow-count-mismatch"]
    printed = installed.wegeft_vision("data", "check", *argv).stdout
    assert "test.txt: 3 entries, expected 711 (accepted by --allow-count-mismatch)" in printed  # the bundled counts


@pytest.mark.slow
@pytest.mark.skipif(not FGVC_REFERENCE.is_dir(), reason="../shared/reference/fgvc_splits is absent")
def test_installed_fetch_splits_verifies_against_the_bundled_manifest(installed):
    """Files already in place with the bundled manifest's checksums are verified and kept: nothing to download."""
    folder = installed.workdir / "splits" / "oxfordflowers"
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        shutil.copyfile(FGVC_REFERENCE / "oxfordflowers" / f"{split}.json", folder / f"{split}.json")
    printed = installed.wegeft_vision("data", "fetch-splits", "fgvc/oxfordflowers", "--dest", folder.parent).stdout
    assert printed.splitlines() == [f"ok {folder / split}.json" for split in ("train", "val", "test")]
