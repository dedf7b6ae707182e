"""Packed training (`training.packing`): K grid points in one forward/backward are K separate runs, in float64.

Checked at two levels: the network (logits and every trainable tensor's gradient of each point, with stochastic depth,
for every catalogue variant that packs) and Lightning training (per-epoch validation top-1, final tensors, a point
that diverges and leaves the pack, resume from a packed checkpoint)."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit
from torch.utils.data import DataLoader, TensorDataset

from wegeft_vision.methods import HFPeftConfig, inject, trainable_parameters
from wegeft_vision.methods.catalogue import variants
from wegeft_vision.training import ClassificationModule, EpochSeed, TrainingDiverged
from wegeft_vision.training.packing import PackedNetwork, packable, split_by_point

UNPACKABLE = {"peft-loha": "In order to use an autograd.Function with functorch transforms", "peft-vblora": None}
PACKABLE = [v for v in variants() if v.name not in UNPACKABLE]
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9, scale: float = 0.0) -> bool:
    """Equal within `rel` of the larger magnitude of the two tensors, or of `scale` (a gradient that is zero up to
    rounding compares against the point's largest gradient)."""
    scale = max(a.abs().max().item(), b.abs().max().item(), scale, 1e-300)
    return (a - b).abs().max().item() <= rel * scale


@pytest.mark.parametrize("variant", PACKABLE, ids=lambda v: v.name)
def test_each_point_of_a_pack_computes_what_its_own_network_computes(variant):
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    network = inject(make_tiny_vit(num_classes=5, depth=2, drop_path_rate=0.2).double(), variant.config())
    packed = PackedNetwork(network, 3)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # three different points
        for k in range(3):
            for tensor in packed.points[k]:
                tensor.add_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.1)
    network.train()
    torch.manual_seed(3)
    logits = packed(images)
    sum(F.cross_entropy(point_logits, labels) for point_logits in logits).backward()
    for k in range(3):
        alone = copy.deepcopy(packed.write_point(k))
        tensors = trainable_parameters(alone)
        assert list(tensors) == packed.names
        torch.manual_seed(3)  # the same stochastic-depth draws as the pack's
        expected = alone(images)
        F.cross_entropy(expected, labels).backward()
        assert _close(logits[k], expected), f"point {k}: logits"
        largest = max(t.grad.abs().max().item() for t in tensors.values())
        for i, (name, tensor) in enumerate(tensors.items()):
            assert _close(packed.points[k][i].grad, tensor.grad, scale=largest), f"point {k}: gradient of {name}"


def test_a_method_that_cannot_pack_says_why():
    pytest.importorskip("peft")
    network = inject(make_tiny_vit(), HFPeftConfig(kind="loha"))
    assert UNPACKABLE["peft-loha"] in packable(network)
    with pytest.raises(ValueError, match="method peft cannot be packed: In order to use an autograd.Function"):
        PackedNetwork(network, 2)
    assert packable(inject(make_tiny_vit(), HFPeftConfig(kind="lora"))) is None


def test_a_packed_log_splits_into_each_points_log():
    rows = [
        {"epoch": "0", "step": "3", "val/acc@0": "0.5", "val/acc@1": "0.25"},
        {"epoch": "1", "step": "7", "val/acc@0": "0.75", "val/acc@1": ""},
    ]
    assert split_by_point(rows, 1) == [{"epoch": "0", "step": "3", "val/acc": "0.25"}]
    assert split_by_point(rows, 0)[1] == {"epoch": "1", "step": "7", "val/acc": "0.75"}


# --- Lightning training -------------------------------------------------------------------------------------------

POINTS = [(2e-3, 1e-4), (8e-3, 0.0), (5e-2, 1e-3)]


class _Data(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(40, 3, 32, 32, generator=generator)
        self.y = torch.randint(0, 4, (40,), generator=generator)

    def train_dataloader(self):
        order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(self.x[:32][order], self.y[:32][order]), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[32:], self.y[32:]), batch_size=8)


class _ValidationLog(L.Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/acc")})


def _fit(
    method: dict, epochs: int = 3, clip: float | None = None, **module_args
) -> tuple[ClassificationModule, _ValidationLog]:
    L.seed_everything(0, verbose=False)
    module = ClassificationModule(
        num_classes=4,
        method=method,
        backbone="vit_base_patch16_224",
        pretrained=False,
        backbone_overrides=TINY,
        epochs=epochs + 1,
        warmup_epochs=1,
        drop_path=0.1,
        label_smoothing=0.1,
        no_decay_1d_and_bias=True,
        **module_args,
    )
    log = _ValidationLog()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[EpochSeed(0), log],
        gradient_clip_val=clip,
    )
    trainer.fit(module, datamodule=_Data())
    return module, log


TRAINED = [v for v in PACKABLE if not v.name.startswith("peft") and v.name != "full"]  # full: all of it, slowly


@pytest.mark.parametrize("variant", TRAINED, ids=lambda v: v.name)
def test_a_packed_run_trains_each_point_as_its_own_run(variant):
    method = variant.config().to_dict()
    packed, packed_log = _fit(method, pack=[{"lr": lr, "weight_decay": wd} for lr, wd in POINTS])
    for k, (lr, wd) in enumerate(POINTS):
        alone, log = _fit(method, lr=lr, weight_decay=wd)
        assert [e["val/acc"] for e in log.epochs] == [e[f"val/acc@{k}"] for e in packed_log.epochs]
        mine = packed.packed.point_tensors(k)
        theirs = trainable_parameters(alone.network)
        # relative to the point's largest tensor: a tensor whose gradient is zero up to rounding (g_theta's last bias)
        # moves by lr * rounding / eps per AdamW step (~1e-10), differently in any two computations
        largest = max(t.abs().max().item() for t in theirs.values())
        for name, tensor in theirs.items():
            assert _close(mine[name], tensor, scale=largest), f"point {k}: {name}"


def test_gradient_clipping_is_each_points_own():
    """Clipped at a norm every point exceeds: each point's gradient is clipped by its own norm, as in its run."""
    method = {"method": "lora"}
    packed, packed_log = _fit(method, clip=0.05, pack=[{"lr": lr, "weight_decay": wd} for lr, wd in POINTS[:2]])
    unclipped, _ = _fit(method, lr=POINTS[0][0], weight_decay=POINTS[0][1])
    for k, (lr, wd) in enumerate(POINTS[:2]):
        alone, log = _fit(method, clip=0.05, lr=lr, weight_decay=wd)
        assert [e["val/acc"] for e in log.epochs] == [e[f"val/acc@{k}"] for e in packed_log.epochs]
        mine = packed.packed.point_tensors(k)
        assert all(_close(mine[n], t) for n, t in trainable_parameters(alone.network).items())
    changed = trainable_parameters(unclipped.network)
    assert not all(_close(packed.packed.point_tensors(0)[n], t) for n, t in changed.items())  # clipping was active


def test_pack_auto_measures_what_fits(tmp_path):
    """`--pack auto` on the smoke recipe: a measured number of points between 1 and the grid."""
    from conftest import smoke_final_spec

    from wegeft_vision.data import write_synthetic
    from wegeft_vision.training.packing import points_that_fit

    write_synthetic(tmp_path, "shape", {"train800": 8, "val200": 8, "test": 8}, size=32)
    config = smoke_final_spec(tmp_path, stage="search").config
    assert 1 <= points_that_fit(config, 6) <= 6
    assert points_that_fit(config, 6, headroom=1e-9) == 1  # no room: one point at a time


def test_a_point_that_diverges_leaves_the_pack_and_the_others_go_on():
    """A point whose lr blows it up is marked diverged with its own run's reason, at its own run's step; the other
    points end exactly as their own runs."""
    method = {"method": "wegeft"}
    points = [POINTS[0], (1e300, 0.0), POINTS[1]]
    packed, packed_log = _fit(method, pack=[{"lr": lr, "weight_decay": wd} for lr, wd in points])
    assert list(packed.diverged) == [1] and packed.packed.active == [0, 2]
    with pytest.raises(TrainingDiverged) as stopped:
        _fit(method, lr=points[1][0], weight_decay=points[1][1])
    assert packed.diverged[1] == str(stopped.value)
    for k in (0, 2):
        alone, log = _fit(method, lr=points[k][0], weight_decay=points[k][1])
        assert [e["val/acc"] for e in log.epochs] == [e[f"val/acc@{k}"] for e in packed_log.epochs]
        mine = packed.packed.point_tensors(k)
        assert all(_close(mine[n], t) for n, t in trainable_parameters(alone.network).items())


def test_a_packed_run_writes_each_points_own_result(tmp_path):
    """`train_pack`: each point's row (a diverged one with its run's reason and epochs) and its own folder, as
    `train_run` would write them."""
    from conftest import smoke_final_spec

    from wegeft_vision.data import write_synthetic
    from wegeft_vision.protocol.runs import pack_dir, train_pack, train_run

    write_synthetic(tmp_path / "data", "shape", {"train800": 32, "val200": 16, "test": 16}, size=32)
    specs = [
        smoke_final_spec(tmp_path / "data", stage="search", stop_epoch=2, lr=lr, weight_decay=wd)
        for lr, wd in ((5e-3, 1e-4), (1e30, 0.0))
    ]
    rows = train_pack(specs, tmp_path / "packed")
    for spec, row in zip(specs, rows, strict=True):
        alone = train_run(spec, tmp_path / "alone")
        keep = ("state", "reason", "epochs", "top1", "best_top1", "best_epoch", "params", "run_dir", "lr")
        assert {c: row[c] for c in keep} == {c: alone[c] for c in keep}
        assert row["pack"] == 2 and alone["pack"] == 1
        record = json.loads((tmp_path / "packed" / row["run_dir"] / "result.json").read_text())
        assert record["pack"] == str(pack_dir(specs, tmp_path / "packed").relative_to(tmp_path / "packed"))
        assert record["row"] == row
    assert rows[1]["state"] == "diverged" and rows[0]["state"] == "finished" and rows[0]["params"] > 0
    assert train_pack(specs, tmp_path / "packed") == rows  # finished points are reused, not trained again
