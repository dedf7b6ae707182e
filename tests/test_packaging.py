"""The package as users install it: a wheel carries the code, the presets and configs (`configs/`) and the split
manifests (`data_splits/`), and an installed copy runs the demo, a paper dry-run and the data commands from any folder,
with nothing from the source checkout."""

from __future__ import annotations

import json
import shutil
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
from conftest import REPO

from wegeft_vision.data.registry import VTAB_TASKS

FGVC_REFERENCE = REPO.parent / "shared" / "reference" / "fgvc_splits"


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


@pytest.mark.slow
def test_the_wheel_carries_code_configs_and_manifests(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    expected = {
        f"wegeft_vision/{p.relative_to(REPO / 'wegeft_vision')}" for p in (REPO / "wegeft_vision").rglob("*.py")
    }
    expected |= {f"wegeft_vision/{p.relative_to(REPO)}" for p in (REPO / "configs").rglob("*.yaml")}
    expected |= {f"wegeft_vision/{p.relative_to(REPO)}" for p in (REPO / "data_splits").glob("*.yaml")}
    expected |= {"wegeft_vision/backbones/weights/vit_mini_patch8_32.procedural.safetensors"}
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
