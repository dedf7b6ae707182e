"""Untrusted files: planted faults in adapter files (sidecar and tensors) and in backbone weights files are refused
with a message naming the file and the key or tensor, leave the files as they were, run nothing stored in a pickle,
and reach the user as one line and exit code 2 through `wegeft-vision visualize`."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT, make_tiny_vit, randomize_trainable
from PIL import Image
from safetensors.torch import load_file, save_file

from wegeft_vision.backbones import create_backbone
from wegeft_vision.cli import main
from wegeft_vision.files import sha256_of
from wegeft_vision.methods import WeGeFTConfig, inject, load_adapted_model, load_adapter, save_adapter

CLASSES, RANK = 4, 3
PHI, PSI = "blocks.0.attn.proj.projections.phi", "blocks.0.attn.proj.projections.psi"
AUTHORS_CHECKPOINT = Path("/work/shared/reference/authors_gift/CUB_last.pth.tar")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A WeGeFT adapter on a tiny random-init backbone (its sidecar records the seed: no weights file needed)."""
    backbone = create_backbone("vit_base_patch16_224", num_classes=CLASSES, init_seed=5, **TINY_VIT)
    model = inject(backbone, WeGeFTConfig(rank=RANK))
    randomize_trainable(model)
    return save_adapter(model, tmp_path_factory.mktemp("good") / "adapter.safetensors", backbone_overrides=TINY_VIT)


@pytest.fixture
def adapter(good: Path, tmp_path: Path) -> Path:
    """A copy of the good adapter (tensors + sidecar) to plant a fault in."""
    for file in (good, sidecar(good)):
        shutil.copy(file, tmp_path / file.name)
    return tmp_path / good.name


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        meta = json.loads(sidecar(path).read_text())
        change(meta)
        sidecar(path).write_text(json.dumps(meta))

    return plant


def edit_tensors(change: Callable[[dict], object], relist: bool = False) -> Callable[[Path], None]:
    """Rewrite the tensor file; with `relist`, the sidecar's `tensors` list follows (the pair stays consistent)."""

    def plant(path: Path) -> None:
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, str(path))
        if relist:
            edit_meta(lambda meta: meta.update(tensors=sorted(tensors)))(path)

    return plant


def write(name: str, content: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        target = path if name == "adapter" else sidecar(path)
        target.write_bytes(content(target.read_bytes()) if callable(content) else content)

    return plant


def set_value(tensors: dict, name: str, value: float) -> None:
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value


# (id, plant, exception, the file the message names, fragments it holds)
FAULTS = [
    ("sidecar missing", lambda p: sidecar(p).unlink(), FileNotFoundError, "sidecar", ["does not exist"]),
    ("sidecar not JSON", write("sidecar", b'{"format": "wegeft-'), ValueError, "sidecar", ["not valid JSON", "line 1"]),
    ("sidecar not UTF-8", write("sidecar", b'{"\xff": 1}'), ValueError, "sidecar", ["not UTF-8"]),
    ("sidecar JSON array", write("sidecar", b"[1, 2]"), ValueError, "sidecar", ["JSON object, not a JSON array"]),
    ("format", edit_meta(lambda m: m.update(format="other")), ValueError, "sidecar", ["'format'", "'other'"]),
    ("no format_version", edit_meta(lambda m: m.pop("format_version")), ValueError, "sidecar", ["'format_version'"]),
    (
        "future format_version",
        edit_meta(lambda m: m.update(format_version=3)),
        ValueError,
        "sidecar",
        ["'format_version' is 3", "reads version 2"],
    ),
    ("missing key", edit_meta(lambda m: m.pop("config")), ValueError, "sidecar", ["missing key(s) ['config']"]),
    (
        "missing nested key",
        edit_meta(lambda m: m["backbone"].pop("num_classes")),
        ValueError,
        "sidecar",
        ["missing key(s) ['backbone.num_classes']"],
    ),
    ("unknown key", edit_meta(lambda m: m.update(code="x")), ValueError, "sidecar", ["unknown key(s) ['code']"]),
    (
        "wrong type",
        edit_meta(lambda m: m["backbone"].update(num_classes="four")),
        ValueError,
        "sidecar",
        ["'backbone.num_classes'", "'four'", "(string)"],
    ),
    (
        "tensors not a list",
        edit_meta(lambda m: m.update(tensors="head.weight")),
        ValueError,
        "sidecar",
        ["'tensors'", "a list"],
    ),
    (
        "unknown method option",
        edit_meta(lambda m: m["config"].update(colour="red")),
        ValueError,
        "sidecar",
        ["'config'", "unknown option(s) ['colour']"],
    ),
    (
        "unknown method",
        edit_meta(lambda m: m["config"].update(method="magic")),
        ValueError,
        "sidecar",
        ["'config'", "unknown method 'magic'"],
    ),
    (
        "NaN option",
        edit_meta(lambda m: m["config"].update(dropout=math.nan)),
        ValueError,
        "sidecar",
        ["'config.dropout'", "finite"],
    ),
    (
        "unknown weights kind",
        edit_meta(lambda m: m["backbone"].update(weights={"kind": "ftp"})),
        ValueError,
        "sidecar",
        ["'backbone.weights.kind'", "'ftp'"],
    ),
    (
        "shipped weights outside the package",
        edit_meta(lambda m: m["backbone"].update(weights={"kind": "shipped", "file": "../../x", "sha256": "0" * 64})),
        ValueError,
        "sidecar",
        ["'backbone.weights.file'", "'../../x'"],
    ),
    (
        "reserved override",
        edit_meta(lambda m: m["backbone"]["overrides"].update(pretrained=True)),
        ValueError,
        "sidecar",
        ["'backbone.overrides'", "['pretrained']"],
    ),
    (
        "unknown override",
        edit_meta(lambda m: m["backbone"]["overrides"].update(colour=1)),
        ValueError,
        "sidecar",
        ["'backbone.overrides'", "colour"],
    ),
    (
        "unknown tag",
        edit_meta(lambda m: m["backbone"].update(tag="nope")),
        ValueError,
        "sidecar",
        ["'backbone.tag'", "'nope'"],
    ),
    (
        "class count",
        edit_meta(lambda m: m["backbone"].update(num_classes=7)),
        ValueError,
        "adapter",
        ["head.bias has 4 classes", "'backbone.num_classes'", "is 7"],
    ),
    (
        "tensor missing from the file",
        edit_tensors(lambda t: t.pop("head.bias")),
        ValueError,
        "adapter",
        ["does not match its sidecar", "'tensors'", "missing ['head.bias']"],
    ),
    (
        "tensor missing",
        edit_tensors(lambda t: t.pop("head.bias"), relist=True),
        ValueError,
        "adapter",
        ["does not fit the model: missing ['head.bias']"],
    ),
    (
        "tensor extra",
        edit_tensors(lambda t: t.update({"blocks.0.attn.qkv.weight": torch.zeros(96, 32)}), relist=True),
        ValueError,
        "adapter",
        ["does not fit the model: unexpected ['blocks.0.attn.qkv.weight']"],
    ),
    (
        "tensor shape",
        edit_tensors(lambda t: t.update({PHI: torch.zeros(t[PHI].shape[0] + 1, t[PHI].shape[1])})),
        ValueError,
        "adapter",
        [f"{PHI} has shape"],
    ),
    (
        "tensor dtype",
        edit_tensors(lambda t: t.update({PHI: t[PHI].to(torch.int32)})),
        ValueError,
        "adapter",
        [f"{PHI} has dtype torch.int32, model has torch.float32"],
    ),
    ("tensor NaN", edit_tensors(lambda t: set_value(t, PSI, math.nan)), ValueError, "adapter", [PSI, "NaN"]),
    ("tensor inf", edit_tensors(lambda t: set_value(t, "head.weight", -math.inf)), ValueError, "adapter", ["head.w"]),
    (
        "truncated safetensors",
        write("adapter", lambda data: data[: len(data) // 2]),
        ValueError,
        "adapter",
        ["not a readable safetensors file"],
    ),
    (
        "not safetensors",
        write("adapter", b"PK\x03\x04 a zip, not safetensors"),
        ValueError,
        "adapter",
        ["not a readable safetensors file"],
    ),
]


def snapshot(path: Path) -> dict[Path, bytes]:
    return {file: file.read_bytes() for file in (path, sidecar(path)) if file.exists()}


@pytest.mark.parametrize(("plant", "error", "names", "fragments"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_is_refused_naming_file_and_key_and_files_are_unchanged(adapter, plant, error, names, fragments):
    plant(adapter)
    before = snapshot(adapter)
    with pytest.raises(error) as info:
        load_adapted_model(adapter)
    message = str(info.value)
    assert str(adapter if names == "adapter" else sidecar(adapter)) in message
    for fragment in fragments:
        assert fragment in message
    assert snapshot(adapter) == before


def test_fault_through_the_cli_is_one_line_and_exit_2(adapter, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    command = ["visualize", "--adapter", str(adapter), "--images", str(images), "--out", str(tmp_path / "out")]
    assert main(command) == 0  # the planted faults below are what fails
    capsys.readouterr()
    for name, plant, *_ in FAULTS:
        shutil.copy(adapter, tmp_path / "good.safetensors")
        shutil.copy(sidecar(adapter), tmp_path / "good.json")
        plant(adapter)
        assert main(command) == 2, name
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("wegeft-vision visualize: error:"), (name, err)
        assert adapter.name in err or sidecar(adapter).name in err, (name, err)
        assert "Traceback" not in err, name
        with pytest.raises((ValueError, FileNotFoundError)):
            main(["--debug", *command])  # --debug lets the exception through
        shutil.copy(tmp_path / "good.safetensors", adapter)
        shutil.copy(tmp_path / "good.json", sidecar(adapter))


def test_floating_tensors_of_another_precision_load_cast(adapter, good):
    """What a `precision: bf16-true` run saves: the float32 model takes the values cast, as copy_ always did."""
    edit_tensors(lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))(adapter)
    loaded = load_adapted_model(adapter)
    expected = load_file(good)
    assert torch.equal(loaded.blocks[0].attn.proj.projections.phi, expected[PHI].to(torch.bfloat16).float())


def test_class_count_of_an_injected_model_is_named(adapter):
    model = inject(make_tiny_vit(num_classes=CLASSES + 1), WeGeFTConfig(rank=RANK))
    with pytest.raises(ValueError, match=rf"{adapter} has {CLASSES} classes \('backbone.num_classes'.*the model 5"):
        load_adapter(model, adapter)


# --- backbone weights files --------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this object opens (creates) `marker`: what a malicious pickle does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def malicious(tmp_path) -> Iterator[tuple[Path, Path]]:
    """A `.pth` whose unpickling would create a marker file; after the test, proof that it really would."""
    marker, weights = tmp_path / "MARKER", tmp_path / "evil.pth"
    state = {k: v.contiguous() for k, v in make_tiny_vit(num_classes=CLASSES).state_dict().items()}
    torch.save({"state_dict": state, "payload": _Payload(marker)}, weights)
    yield weights, marker
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the unsafe load this project never makes
    assert marker.exists(), "the planted payload is inert: the test proves nothing"


def test_malicious_pickle_weights_are_refused_without_running_them(malicious, adapter):
    weights, marker = malicious
    with pytest.raises(ValueError, match=rf"weights file {weights} is refused: .*io.open"):
        create_backbone("vit_base_patch16_224", num_classes=CLASSES, weights=weights, **TINY_VIT)
    with pytest.raises(ValueError, match=rf"weights file {weights} is refused"):
        load_adapted_model(adapter, weights=weights)
    assert not marker.exists()


def _record_weights(adapter: Path, weights: Path) -> None:
    """Make the adapter's sidecar record `weights` (with its sha256) as where the backbone's weights came from."""
    source = {"kind": "file", "path": str(weights), "sha256": sha256_of(weights)}
    edit_meta(lambda meta: meta["backbone"].update(weights=source))(adapter)


def test_malicious_pickle_recorded_in_a_sidecar_is_refused(malicious, adapter):
    weights, marker = malicious
    _record_weights(adapter, weights)
    before = snapshot(adapter)
    with pytest.raises(ValueError, match=rf"adapter {adapter}: weights file {weights} is refused"):
        load_adapted_model(adapter)
    assert not marker.exists() and snapshot(adapter) == before


def test_malicious_pickle_through_the_cli_subprocess(malicious, adapter, tmp_path):
    """The real command in a fresh process: one line naming the adapter and the weights file, exit 2, no trace."""
    weights, marker = malicious
    _record_weights(adapter, weights)
    before = snapshot(adapter)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    command = [sys.executable, "-m", "wegeft_vision.cli", "visualize", "--adapter", str(adapter)]
    command += ["--images", str(images), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("wegeft-vision visualize: error: adapter ") and str(adapter) in line
    assert f"weights file {weights} is refused" in line and "Traceback" not in result.stderr
    assert not marker.exists() and snapshot(adapter) == before


def test_damaged_or_foreign_weights_files_are_named(tmp_path):
    state = {k: v.contiguous() for k, v in make_tiny_vit(num_classes=10).state_dict().items()}
    cases = {}
    save_file(state, str(tmp_path / "full.safetensors"))
    cases["cut.safetensors"] = ((tmp_path / "full.safetensors").read_bytes()[:1000], "not a readable safetensors file")
    torch.save(state, tmp_path / "full.pth")
    cases["cut.pth"] = ((tmp_path / "full.pth").read_bytes()[:1000], "neither safetensors nor a readable PyTorch")
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save([1, 2], tmp_path / "list.pth")
    cases["list.pth"] = (None, "holds no state dict")
    torch.save({"blocks.0.norm1.weight": 3}, tmp_path / "number.pth")
    cases["number.pth"] = (None, "entry 'blocks.0.norm1.weight' holds int, not a tensor")
    torch.save({k: v for k, v in state.items() if k != "pos_embed"}, tmp_path / "partial.pth")
    cases["partial.pth"] = (None, "does not fit vit_base_patch16_224: it lacks pos_embed")  # not left at random init
    for name, (_, message) in cases.items():
        with pytest.raises(ValueError, match=rf"weights file {tmp_path / name}.*{message}"):
            create_backbone("vit_base_patch16_224", num_classes=CLASSES, weights=tmp_path / name, **TINY_VIT)


def test_training_checkpoints_with_arguments_load(tmp_path):
    """A timm training checkpoint: `state_dict` (DataParallel `module.` names) beside an `argparse.Namespace`."""
    source = make_tiny_vit(num_classes=10, seed=8)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pth.tar")
    model = create_backbone("vit_base_patch16_224", num_classes=CLASSES, weights=tmp_path / "train.pth.tar", **TINY_VIT)
    assert torch.equal(model.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    assert "state_dict" not in model.pretrained_cfg  # the weights live in the model, not twice


@pytest.mark.skipif(not AUTHORS_CHECKPOINT.is_file(), reason="the authors' released checkpoints are not here")
def test_authors_checkpoint_reads_safely_and_is_named_as_not_a_backbone():
    """The WeGeFT authors' `.pth.tar` (a pickle with an `argparse.Namespace`) reads with weights_only=True: it holds
    an adapter and a head, not backbone weights, which the error says."""
    with pytest.raises(ValueError, match=r"CUB_last.pth.tar does not fit vit_base_patch16_224: it lacks cls_token"):
        create_backbone("vit_base_patch16_224", num_classes=CLASSES, weights=AUTHORS_CHECKPOINT, **TINY_VIT)
