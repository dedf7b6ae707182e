"""`wegeft-vision fit|validate|test`: LightningCLI composing the method presets with a dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic

PRESETS = Path(__file__).parents[1] / "configs" / "method"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab")
    write_synthetic(root, "shape", {"train800": 16, "val200": 8, "test": 8}, size=32)
    return root


def arguments(synthetic: Path, out: Path, method: str = "wegeft_r16.yaml") -> list[str]:
    return [
        "--model.pretrained=false",
        "--model.backbone=vit_base_patch16_224",
        "--model.backbone_overrides={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        f"--model.method={PRESETS / method}",
        "--model.epochs=3",
        "--model.warmup_epochs=1",
        "--data.dataset=vtab-1k/synthetic_shape",
        f"--data.root={synthetic}",
        f"--data.manifest={synthetic / 'synthetic_shape' / 'manifest.yaml'}",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}",
    ]


def test_fit_then_test_from_checkpoint(synthetic, tmp_path):
    assert main(["fit", *arguments(synthetic, tmp_path, "lora_r8.yaml"), "--trainer.max_epochs=2"]) == 0
    config = yaml.safe_load(next(tmp_path.rglob("config.yaml")).read_text())
    assert config["model"]["method"]["class_path"].endswith("LoRAConfig")
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["num_classes"] == 4  # linked from the dataset's manifest
    assert saved["hyper_parameters"]["method"]["method"] == "lora"
    assert all("lora_" in name or name.startswith("network.head.") for name in saved["state_dict"])
    assert main(["test", *arguments(synthetic, tmp_path / "test", "lora_r8.yaml"), f"--ckpt_path={checkpoint}"]) == 0


def test_print_config_composes_the_preset(synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *arguments(synthetic, tmp_path, "wegeft_sep.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["method"]["init_args"]["shared"] is False
    assert printed["data"]["dataset"] == "vtab-1k/synthetic_shape"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--model.lrr=0.1", "unrecognized arguments: --model.lrr=0.1"),
        ("--model.lr=fast", "Parser key \"model.lr\": Expected a <class 'float'>. Got value: fast"),
        ("--trainer.precision=17", 'Parser key "trainer.precision"'),
        ("--model.backbone=vit_nope", "unknown timm model 'vit_nope'"),
        ("--data.root=/no/such/root", "VTAB-1k root folder /no/such/root does not exist"),
    ],
)
def test_user_errors_give_one_line_and_exit_2(synthetic, tmp_path, capsys, extra, message):
    assert main(["fit", *arguments(synthetic, tmp_path), extra, "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("wegeft-vision fit: error:")]
    assert message in line and "Traceback" not in err
    with pytest.raises(Exception):  # noqa: B017 - --debug shows the error itself, whatever its type
        main(["--debug", "fit", *arguments(synthetic, tmp_path), extra, "--trainer.max_epochs=1"])


def test_fit_on_a_folder_of_ones_own_by_its_path(synthetic, tmp_path):
    folder = write_synthetic(tmp_path, "colour", {"train800": 16, "val200": 8, "test": 8}, size=32, name="mine")
    (folder / "manifest.yaml").unlink()  # as a user's folder comes: the class count is read from the data
    dataset_args = ("--data.dataset", "--data.root", "--data.manifest")
    args = [a for a in arguments(synthetic, tmp_path) if not a.startswith(dataset_args)]
    assert main(["fit", *args, f"--data.dataset={folder}", "--trainer.max_epochs=1"]) == 0
    saved = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert saved["hyper_parameters"]["num_classes"] == 6  # the six colours found in the split files
    assert yaml.safe_load((folder / "manifest.yaml").read_text())["benchmark"] == "custom"
