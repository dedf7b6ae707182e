"""Shared fixtures: tiny random-weight timm ViTs (no downloads) and inputs for them; the package built as a wheel and
installed in a fresh folder, as users install it (`installed`)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)


def make_tiny_vit(num_classes: int = 5, seed: int = 0, **overrides) -> nn.Module:
    """A 3-block ViT on 32x32 inputs with random weights, deterministic for a given seed."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=num_classes, **{**TINY_VIT, **overrides}
    )


@pytest.fixture
def tiny_vit() -> nn.Module:
    return make_tiny_vit().eval()


@pytest.fixture
def tiny_vit64() -> nn.Module:
    return make_tiny_vit().double().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomize_trainable(model: nn.Module, seed: int = 2, std: float = 0.3) -> None:
    """Non-zero values for every trainable tensor: an identity init would hide merge and formula bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)


def clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def fake_hub_cache(cache: Path, repo_id: str, tensors: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout of a downloaded `model.safetensors`, as a first (online) run would leave it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(repo / "snapshots" / commit / "model.safetensors"))


def smoke_final_spec(root: Path, **changes):
    """A final WeGeFT run of the smoke preset on the synthetic shapes task under `root`; `changes`: `RunConfig`
    fields (stage, stop_epoch, overrides, devices, ...)."""
    from wegeft_vision.data.lookup import find_task
    from wegeft_vision.protocol.preset import load_preset
    from wegeft_vision.protocol.runs import RunSpec
    from wegeft_vision.training.run_config import RunConfig

    preset = load_preset("smoke")
    task = find_task("vtab-1k", "synthetic_shape", root)
    fields = dict(
        recipe=preset.fit_config,
        method=preset.methods["wegeft"].config,
        data=task.data_arguments(),
        stage="final",
        lr=5e-3,
        weight_decay=1e-4,
        seed=0,
    )
    config = RunConfig(**{**fields, **changes})
    return RunSpec("vtab-1k", task.name, "wegeft", "smoke", preset.fingerprint(), config, task.identity())


REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "lightning_logs")


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


@pytest.fixture(scope="session")
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
