"""The Lightning module: a short fit, the warmup + cosine schedule, adapter-only checkpoints and resuming."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
from conftest import TINY_VIT
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from wegeft_vision.methods import LoRAConfig, load_adapted_model, load_adapter, read_adapter_meta
from wegeft_vision.training import ClassificationModule


def loader(n: int = 16, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def module(**kwargs) -> ClassificationModule:
    torch.manual_seed(0)
    options = dict(num_classes=3, backbone="vit_base_patch16_224", pretrained=False, backbone_overrides=TINY_VIT)
    return ClassificationModule(**{**options, **kwargs})


def trainer(tmp_path, epochs: int, **kwargs) -> L.Trainer:
    options = dict(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(max_epochs=epochs, accelerator="cpu", deterministic=True, **{**options, **kwargs})


def test_schedule_warms_up_then_follows_the_cosine_and_search_truncates_it():
    model = module(lr=1e-2, epochs=8, warmup_epochs=2, warmup_lr=1e-5, min_lr=1e-4)
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = [scheduler._get_lr(epoch)[0] for epoch in range(9)]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[1] == pytest.approx(1e-5 + (1e-2 - 1e-5) / 2)  # linear warmup
    cosine = [1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + torch.cos(torch.tensor(torch.pi * e / 8)).item()) for e in range(2, 9)]
    assert lrs[2:] == pytest.approx(cosine)


def test_fit_trains_only_the_method_and_checkpoints_hold_no_backbone(tmp_path):
    model = module(method=LoRAConfig(rank=2), lr=1e-2, epochs=4, warmup_epochs=1)
    frozen_before = model.network.blocks[0].attn.qkv.weight.detach().clone()
    lora_before = model.network.blocks[0].attn.proj.lora_B.detach().clone()
    fit = trainer(tmp_path, epochs=2)
    fit.fit(model, loader(), loader(seed=1))
    assert torch.equal(model.network.blocks[0].attn.qkv.weight, frozen_before)
    assert not torch.equal(model.network.blocks[0].attn.proj.lora_B, lora_before)
    assert {"train/loss", "val/acc", "train/lr"} <= set(fit.callback_metrics)

    checkpoint = torch.load(fit.checkpoint_callback.best_model_path, weights_only=True)
    names = set(checkpoint["state_dict"])
    assert names == {f"network.blocks.{i}.attn.proj.lora_{m}" for i in range(3) for m in "AB"} | {
        "network.head.weight",
        "network.head.bias",
    }
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]

    # Resume on a fresh module: the run continues from epoch 2 with the trained tensors.
    resumed = module(method=LoRAConfig(rank=2), lr=1e-2, epochs=4, warmup_epochs=1)
    more = trainer(tmp_path, epochs=3)
    more.fit(resumed, loader(), loader(seed=1), ckpt_path=fit.checkpoint_callback.best_model_path)
    assert more.current_epoch == 3
    assert torch.equal(resumed.network.blocks[0].attn.qkv.weight, frozen_before)


def test_save_adapter_records_training_settings_and_reloads(tmp_path):
    model = module(lr=3e-3, weight_decay=0.0).eval()
    with torch.no_grad():
        model.network.blocks[0].attn.proj.projections.psi.normal_()
    path = model.save_adapter(tmp_path / "a.safetensors", extra={"seed": 7})
    meta = read_adapter_meta(path)
    assert meta["extra"]["seed"] == 7 and meta["extra"]["training"]["lr"] == 3e-3
    assert meta["config"]["method"] == "wegeft" and meta["backbone"]["num_classes"] == 3
    torch.manual_seed(0)
    fresh = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3, drop_path_rate=0.1, **TINY_VIT)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(load_adapter(fresh, path).eval()(images), model(images), rtol=0, atol=0)


def test_load_adapted_model_rebuilds_backbone_from_sidecar(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "backbone.safetensors"
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=3, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = module(weights=str(weights), method=LoRAConfig(rank=2)).eval()
    with torch.no_grad():
        model.network.blocks[1].attn.proj.lora_B.normal_()
    path = model.save_adapter(tmp_path / "a.safetensors")
    assert read_adapter_meta(path)["backbone"]["overrides"] == TINY_VIT
    rebuilt = load_adapted_model(path, weights=weights)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(images), model(images), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pt does not exist"):
        load_adapted_model(path, weights=tmp_path / "missing.pt")


def test_invalid_schedule_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs < epochs"):
        module(epochs=5, warmup_epochs=5)


def test_a_checkpoint_of_an_earlier_version_resumes_with_its_tensors_renamed():
    """Lightning checkpoints written before WeGeFT's parts were renamed hold `...generator.phi`: they load into
    `...projections.phi`, never silently left out by the non-strict load."""
    from wegeft_vision.methods import WeGeFTConfig

    model = module(method=WeGeFTConfig(rank=2))
    current = {name: torch.randn_like(tensor) for name, tensor in model.state_dict().items()}
    assert any(".projections.phi" in name for name in current)
    earlier = {name.replace(".projections.", ".generator."): tensor for name, tensor in current.items()}
    checkpoint = {"state_dict": dict(earlier)}
    model.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == current.keys()
    assert all(torch.equal(checkpoint["state_dict"][name], current[name]) for name in current)
    head = next(name for name in current if "head" in name)
    with pytest.raises(ValueError, match=rf"lacks 1 trainable tensor\(s\) of the model, e.g. {head}"):
        model.on_load_checkpoint({"state_dict": {k: v for k, v in current.items() if k != head}})
