"""The authors' released adapters (`last.pth.tar` of github.com/savadikarc/gift) as this toolkit's adapter files."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wegeft_vision.backbones import create_backbone
from wegeft_vision.cli import main
from wegeft_vision.data import write_synthetic
from wegeft_vision.data.manifests import read_manifest
from wegeft_vision.methods import (
    WeGeFTConfig,
    WeGeFTLinear,
    load_adapted_model,
    load_adapter,
    read_adapter_meta,
    trainable_parameters,
)
from wegeft_vision.methods.authors_checkpoint import import_authors_checkpoint
from wegeft_vision.training import ClassificationModule

ARCH = "vit_base_patch16_224.augreg_in21k"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
RANK, CLASSES = 4, 5
REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "authors_gift"
P_IN, P_OUT = "in_projections.attn:proj.weight", "out_projections.attn:proj.weight"


def authors_args(style: str = "hypernet", **changes) -> argparse.Namespace:
    """Training arguments as the authors' script records them: the released checkpoints' pre-release `hypernet_*`
    names, or the released code's `gift_*`."""
    common = dict(model=ARCH, method="gift", num_classes=CLASSES, lr=1e-4, weight_decay=1e-4, opt_betas=[0.9, 0.999])
    if style == "hypernet":
        method = dict(
            hypernet_embed_dim=RANK,
            hypernet_target_modules=["attn:proj"],
            hypernet_block_block_type="simple_block",
            hypernet_block_norm_layer="l2",  # recorded, unused by the simple block
            hypernet_in_projection_bias=False,
            hypernet_out_projection_bias=False,
        )
    else:
        method = dict(
            gift_rank=RANK,
            gift_target_modules=["attn:proj"],
            gift_block_block_type="simple_block",
            gift_block_act_layer="identity",
            gift_enable_gift=None,
            gift_in_projection_bias=False,
        )
    return argparse.Namespace(**{**common, **method, **changes})


def authors_state(dim: int = TINY["embed_dim"], classes: int = CLASSES, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "backbone.head.weight": torch.randn(classes, dim, generator=gen) * 0.1,
        "backbone.head.bias": torch.randn(classes, generator=gen) * 0.1,
        P_IN: torch.randn(RANK, dim, generator=gen) * 0.2,
        P_OUT: torch.randn(dim, RANK, generator=gen) * 0.2,
    }


def write_checkpoint(path: Path, state=None, args=None, **changes) -> Path:
    """A checkpoint in the layout of the authors' `last.pth.tar` (timm's CheckpointSaver)."""
    state = authors_state() if state is None else state
    data = dict(epoch=3, arch=ARCH, state_dict=state, optimizer={"state": {}, "param_groups": []}, version=2)
    data.update(args=authors_args() if args is None else args, metric=71.25)
    data.update(changes)
    torch.save(data, path)
    return path


def read_raw(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


# --- (a) the mapping, in float64, against the formula on the checkpoint's own tensors -------------------------------


@pytest.mark.parametrize("style", ["hypernet", "gift"])
def test_imported_adapter_gives_their_weight_formula_in_float64(style, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar", args=authors_args(style))
    adapter, _ = import_authors_checkpoint(checkpoint, tmp_path / "adapter.safetensors", backbone_overrides=TINY)
    backbone = create_backbone(ARCH, num_classes=CLASSES, pretrained=False, init_seed=3, **TINY)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))

    model = load_adapted_model(adapter, weights=weights).double()  # offline: the backbone from a local file
    raw = read_raw(checkpoint)["state_dict"]
    p_in, p_out = raw[P_IN].double(), raw[P_OUT].double()
    reference = backbone.double().eval()
    layers = [m for m in model.modules() if isinstance(m, WeGeFTLinear)]
    assert len(layers) == TINY["depth"]
    with torch.no_grad():
        for block, layer in zip(reference.blocks, layers, strict=True):
            weight = block.attn.proj.weight
            assert torch.equal(layer.weight, weight)
            expected = weight @ p_in.T @ p_out.T  # their W_hat - W, straight from the checkpoint's tensors
            torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-12, atol=1e-15)
            block.attn.proj.weight += expected
        reference.head.weight.copy_(raw["backbone.head.weight"])
        reference.head.bias.copy_(raw["backbone.head.bias"])
        images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        torch.testing.assert_close(model(images), reference(images), rtol=1e-10, atol=1e-12)  # activation path


def test_sidecar_records_backbone_rank_targets_classes_and_the_training_arguments(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar")
    adapter, _ = import_authors_checkpoint(checkpoint, tmp_path / "adapter.safetensors", backbone_overrides=TINY)
    meta = read_adapter_meta(adapter)
    assert WeGeFTConfig(**{k: v for k, v in meta["config"].items() if k != "method"}) == WeGeFTConfig(rank=RANK)
    assert meta["config"]["alpha"] is None and meta["config"]["targets"] == ["attn.proj"]  # scale 1, as theirs
    backbone = meta["backbone"]
    assert (backbone["architecture"], backbone["tag"], backbone["num_classes"]) == (*ARCH.split("."), CLASSES)
    assert backbone["weights"]["kind"] == "hub" and backbone["overrides"] == TINY
    extra = meta["extra"]
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert extra["imported_from"] == {"file": "last.pth.tar", "sha256": sha, "epoch": 3, "target": "attn:proj"}
    assert extra["args"] == vars(authors_args()) and extra["metric"] == 71.25
    json.dumps(extra, allow_nan=False)  # plain JSON
    assert sorted(load_file(str(adapter))) == sorted(meta["tensors"])


# --- (b) the two released checkpoints ---------------------------------------------------------------------------

released = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} (the released checkpoints) is absent")


@released
@pytest.mark.parametrize(
    ("name", "dataset", "classes", "top1", "lr"),
    [("CUB_last.pth.tar", "CUB", 200, 89.71, 1e-4), ("OxfordFlowers_last.pth.tar", "OxfordFlowers", 102, 99.22, 5e-4)],
)
def test_released_checkpoints_import_exactly(name, dataset, classes, top1, lr, tmp_path):
    path = REFERENCE / name
    adapter, checkpoint = import_authors_checkpoint(path, tmp_path / "adapter.safetensors")
    assert (checkpoint.rank, checkpoint.num_classes, checkpoint.backbone) == (16, classes, ARCH)
    meta = read_adapter_meta(adapter)
    assert meta["backbone"]["num_classes"] == classes and meta["backbone"]["tag"] == "augreg_in21k"
    assert round(meta["extra"]["metric"], 2) == top1
    assert meta["extra"]["args"]["dataset"] == dataset and meta["extra"]["args"]["lr"] == lr
    assert meta["extra"]["imported_from"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    raw = read_raw(path)["state_dict"]
    model = load_adapter(create_backbone(ARCH, num_classes=classes, pretrained=False), adapter)
    params = trainable_parameters(model)
    assert len(params) == 4
    projections = model.blocks[0].attn.proj.projections
    assert all(block.attn.proj.projections is projections for block in model.blocks)  # one pair on all 12 attn.proj
    assert torch.equal(projections.phi, raw[P_IN].T) and torch.equal(projections.psi, raw[P_OUT].T)
    assert torch.equal(model.head.weight, raw["backbone.head.weight"])
    assert torch.equal(model.head.bias, raw["backbone.head.bias"])
    weight = model.blocks[5].attn.proj.weight.double()
    expected = weight @ raw[P_IN].double().T @ raw[P_OUT].double().T
    torch.testing.assert_close(model.blocks[5].attn.proj.delta_weight().double(), expected, rtol=1e-5, atol=1e-6)


# --- (c) refusals -------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object opens (creates) `marker`: what a malicious pickle does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "adapter.safetensors"
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar", payload=_Payload(marker))
    with pytest.raises(ValueError, match=rf"authors' checkpoint {checkpoint} is refused: .*io.open"):
        import_authors_checkpoint(checkpoint, out, backbone_overrides=TINY)
    assert not marker.exists() and not out.exists()
    torch.load(checkpoint, weights_only=False)  # the unsafe load this project never makes
    assert marker.exists(), "the planted payload is inert: the test proves nothing"


def _without(key: str):
    def edit(data):
        data.pop(key)

    return edit


def _set(where: str, key: str, value):
    def edit(data):
        target = data if where == "top" else data[where] if where == "state_dict" else vars(data["args"])
        target[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_without("state_dict"), "key 'state_dict' is missing"),
        (_without("args"), "key 'args' is missing"),
        (lambda d: d["state_dict"].pop("backbone.head.bias"), "key 'state_dict.backbone.head.bias' is missing"),
        (lambda d: d["state_dict"].pop(P_OUT), f"key 'state_dict.{P_OUT}' is missing"),
        (lambda d: d.update(state_dict={}), "key 'state_dict.backbone.head.weight' is missing"),
        (_set("state_dict", "hypernets.attn:proj.0.weight", torch.ones(2, 2)), "'state_dict.hypernets.attn:proj.0.w"),
        (_set("state_dict", "in_projections.attn:proj.bias", torch.ones(RANK)), "projection biases are not supported"),
        (_set("state_dict", P_IN, torch.full((RANK, 32), float("nan"))), f"'state_dict.{P_IN}' holds NaN"),
        (_set("state_dict", P_OUT, torch.ones(32, RANK + 1)), f"'state_dict.{P_OUT}' has shape"),
        (_set("args", "method", "lora"), "key 'args.method' is 'lora': not a WeGeFT"),
        (_set("args", "hypernet_block_block_type", "transformer"), "key 'args.hypernet_block_block_type'"),
        (_set("args", "gift_block_act_layer", "gelu"), "key 'args.gift_block_act_layer' is 'gelu'"),
        (_set("args", "hypernet_embed_dim", 8), "key 'args.hypernet_embed_dim' is 8, the projections' rank 4"),
        (_set("args", "num_classes", 7), "key 'args.num_classes' is 7, the head's classes 5"),
        (_set("top", "arch", "vit_base_patch16_224"), "key 'arch' should be a timm 'architecture.tag'"),
        (_set("top", "metric", "high"), "key 'metric' should be a finite number"),
        (_set("top", "args", [1, 2]), "key 'args' should be an argparse.Namespace"),
    ],
)
def test_malformed_checkpoints_are_refused_naming_the_key(edit, message, tmp_path):
    data = read_raw(write_checkpoint(tmp_path / "good.pth.tar"))
    edit(data)
    checkpoint, out = tmp_path / "last.pth.tar", tmp_path / "adapter.safetensors"
    torch.save(data, checkpoint)
    with pytest.raises(ValueError, match=rf"authors' checkpoint {checkpoint}: .*") as info:
        import_authors_checkpoint(checkpoint, out, backbone_overrides=TINY)
    assert message in str(info.value)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_projections_that_do_not_fit_the_backbone_are_refused(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar", state=authors_state(dim=48))
    with pytest.raises(ValueError, match=rf"{checkpoint}: key 'state_dict.{P_IN}' does not fit {ARCH}"):
        import_authors_checkpoint(checkpoint, tmp_path / "adapter.safetensors", backbone_overrides=TINY)
    state = {k.replace("attn:proj", "mlp:fc9"): v for k, v in authors_state().items()}
    other = write_checkpoint(tmp_path / "fc9.pth.tar", state=state, args=authors_args(hypernet_target_modules=None))
    with pytest.raises(ValueError, match=r"in_projections.mlp:fc9.weight' does not apply .* matches no module"):
        import_authors_checkpoint(other, tmp_path / "adapter.safetensors", backbone_overrides=TINY)


# --- (d) the command, and `test --model.adapter` ----------------------------------------------------------------


def test_cli_writes_the_adapter_and_reports_a_bad_file_in_one_line(tmp_path, capsys):
    state = authors_state(dim=768)  # ViT-B/16's width: the command builds the recorded backbone
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar", state=state)
    out = tmp_path / "imported" / "adapter.safetensors"
    assert main(["import-checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    printed = capsys.readouterr().out
    assert f"WeGeFT r={RANK} on attn.proj of {ARCH}, {CLASSES} classes" in printed and "71.25" in printed

    marker = tmp_path / "MARKER"
    bad = write_checkpoint(tmp_path / "evil.pth.tar", state=state, payload=_Payload(marker))
    assert main(["import-checkpoint", str(bad), "--out", str(tmp_path / "evil.safetensors")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("wegeft-vision import-checkpoint: error: authors' checkpoint ") and "is refused" in line
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()
    assert main(["import-checkpoint", str(tmp_path / "none.pth.tar"), "--out", str(tmp_path / "x.safetensors")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "does not exist" in line


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab")
    write_synthetic(root, "shape", {"train800": 8, "val200": 8, "test": 8}, size=32)
    return root


def test_test_command_evaluates_an_imported_adapter(synthetic, tmp_path):
    classes = read_manifest(synthetic / "synthetic_shape" / "manifest.yaml").num_classes
    state = authors_state(classes=classes)
    checkpoint = write_checkpoint(tmp_path / "last.pth.tar", state=state, args=authors_args(num_classes=classes))
    adapter, _ = import_authors_checkpoint(checkpoint, tmp_path / "adapter.safetensors", backbone_overrides=TINY)

    module = ClassificationModule(
        num_classes=classes, backbone=ARCH, pretrained=False, backbone_overrides=TINY, adapter=str(adapter)
    )
    assert module.method == WeGeFTConfig(rank=RANK)  # the adapter's own method
    assert torch.equal(module.network.blocks[1].attn.proj.projections.phi, state[P_IN].T)
    assert torch.equal(module.network.head.weight, state["backbone.head.weight"])
    with pytest.raises(ValueError, match=r"is for vit_base_patch16_224.augreg_in21k, not vit_base_patch16_224.orig"):
        ClassificationModule(classes, backbone="vit_base_patch16_224.orig_in21k", pretrained=False,
                             backbone_overrides=TINY, adapter=str(adapter))  # fmt: skip
    with pytest.raises(ValueError, match=rf"adapter {adapter} has {classes} classes"):
        ClassificationModule(
            classes + 1, backbone=ARCH, pretrained=False, backbone_overrides=TINY, adapter=str(adapter)
        )

    arguments = [
        "test",
        f"--model.backbone={ARCH}",
        "--model.pretrained=false",
        "--model.backbone_overrides={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
        f"--model.adapter={adapter}",
        "--data.dataset=vtab-1k/synthetic_shape",
        f"--data.root={synthetic}",
        f"--data.manifest={synthetic / 'synthetic_shape' / 'manifest.yaml'}",
        "--data.stage=final",
        "--data.num_workers=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ]
    assert main(arguments) == 0
