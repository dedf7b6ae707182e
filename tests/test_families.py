"""Backbone families × methods, on each family's tiny random configuration in float64: every method works exactly
(gradients reach every trainable tensor, merge and unmerge, adapter files, heatmaps on the model's own token grid) or
is refused by name; EVA/BEiT fused qkv, DeiT's two heads, register tokens, patch 14 and Swin windows."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from wegeft_vision.backbones import create_backbone, data_config
from wegeft_vision.backbones.families import BY_NAME, FAMILIES, family
from wegeft_vision.backbones.families import tiny_model as tiny
from wegeft_vision.methods import (
    BitFitConfig,
    FullFinetuneConfig,
    GenFTConfig,
    LinearProbeConfig,
    LoRAConfig,
    VPTConfig,
    WeGeFTConfig,
    heads,
    inject,
    load_adapter,
    merge,
    require_participation,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from wegeft_vision.methods.participation import input_shape
from wegeft_vision.viz import cluster_heatmaps, cluster_scores

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "wegeft": WeGeFTConfig(rank=4),
    "wegeft-d-out": WeGeFTConfig(rank=4, variant="d_out"),
    "wegeft-sep-qkv": WeGeFTConfig(rank=4, shared=False, targets=("attn.qkv",)),
    "lora": LoRAConfig(rank=4),
    "lora-qv": LoRAConfig(rank=4, targets=("attn.qkv[q,v]",)),
    "genft-qv": GenFTConfig(rank=4, layer_rank=2),
    "bitfit": BitFitConfig(),
    "vpt": VPTConfig(num_prompts=3),
    "linear": LinearProbeConfig(),
    "full": FullFinetuneConfig(),
}
REFUSED = {
    ("beit", "vpt"): "vpt: Beit's attention adds a relative position bias table",
    ("swin", "vpt"): "vpt: SwinTransformer attends within windows of a 2-D token grid",
    ("swinv2", "vpt"): "vpt: SwinTransformerV2 attends within windows of a 2-D token grid",
}


def images_for(model: nn.Module, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *input_shape(model), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def perturb(model: nn.Module, std: float = 0.1, seed: int = 2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_every_method_works_exactly_or_is_refused_by_name(name, method, tmp_path):
    base = tiny(name)
    config = copy.deepcopy(METHODS[method])
    if (name, method) in REFUSED:
        with pytest.raises(TypeError, match=REFUSED[(name, method)]):
            inject(copy.deepcopy(base), config)
        return
    model = inject(copy.deepcopy(base), config)
    x = images_for(model)
    head_names = {n for h in heads(model) for n, _ in h.named_parameters()}
    assert head_names and all(p.requires_grad for h in heads(model) for p in h.parameters())

    # after a perturbation, every trainable tensor gets a non-zero gradient from the logits
    perturb(model)
    trainable = trainable_parameters(model)
    logits = model(x)
    grads = torch.autograd.grad(logits.square().sum(), list(trainable.values()), allow_unused=True)
    dead = [n for (n, _), g in zip(trainable.items(), grads, strict=True) if g is None or g.abs().max() == 0]
    assert not dead, f"{name}/{method}: no gradient reaches {dead}"
    if method not in ("linear", "full"):
        assert not torch.allclose(logits, copy.deepcopy(base).eval()(x)), "the method does not change the output"

    # merge reproduces the logits; unmerge gives back the very pretrained tensors
    if config.mergeable and method not in ("linear", "full", "bitfit"):
        before = {n: t.clone() for n, t in model.state_dict().items()}
        with torch.no_grad():
            torch.testing.assert_close(merge(model)(x), logits.detach(), rtol=0, atol=1e-10)
            unmerge(model)
        assert all(torch.equal(t, model.state_dict()[n]) for n, t in before.items())

    # adapter file round trip onto a fresh backbone of the family
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    loaded = load_adapter(tiny(name), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["eva02", "beit", "swinv2"])
@pytest.mark.parametrize("targets", [("attn.qkv[q,v]",), ("attn.qkv",)])
def test_adapters_on_eva_and_beit_fused_qkv_reach_the_output(name, targets):
    """The adapted model equals the untouched timm model (its own F.linear path with q/v biases) with W_qkv + ΔW."""
    base = tiny(name)
    with torch.no_grad():  # non-zero q/v biases: the path that went around the adapter
        for m in base.modules():
            if getattr(m, "q_bias", None) is not None:
                m.q_bias.normal_(generator=torch.Generator().manual_seed(4))
                m.v_bias.normal_(generator=torch.Generator().manual_seed(5))
    model = inject(copy.deepcopy(base), LoRAConfig(rank=4, targets=targets))
    perturb(model)
    x = images_for(model)
    reference = copy.deepcopy(base)
    attention = [n for n, m in reference.named_modules() if getattr(m, "q_bias", None) is not None]
    assert attention and all(not reference.get_submodule(n).qkv_bias_separate for n in attention)  # F.linear path
    with torch.no_grad():
        for n in attention:
            reference.get_submodule(n).qkv.weight += model.get_submodule(n).qkv.delta_weight()
        for head, trained in zip(heads(reference), heads(model), strict=True):
            head.load_state_dict(trained.state_dict())
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-10)
        assert not torch.allclose(model(x), base(x))


def test_without_routing_the_guard_names_the_bypassed_adapter(monkeypatch):
    import wegeft_vision.methods.base as base_module

    monkeypatch.setattr(base_module, "route_adapted_qkv", lambda model: [])
    with pytest.raises(ValueError, match=r"lora: blocks\.0\.attn\.qkv \(SlicedLinear\) \(and 1 more\) never runs"):
        inject(tiny("eva02"), LoRAConfig(targets=("attn.qkv[q,v]",)))


def test_bitfit_trains_eva_and_beit_separate_q_and_v_biases():
    for name, block in (("eva02", "blocks.0"), ("beit", "blocks.0"), ("swinv2", "layers.0.blocks.0")):
        trainable = set(trainable_parameters(inject(tiny(name), BitFitConfig()), exclude_head=True))
        assert {f"{block}.attn.q_bias", f"{block}.attn.v_bias", f"{block}.attn.proj.bias"} <= trainable
        assert not any("k_bias" in n or "norm" in n for n in trainable)  # k_bias is a zero buffer in timm


def test_unfused_attention_takes_qkv_targets_as_its_three_projections():
    model = inject(tiny("eva02-unfused"), LoRAConfig(rank=2, targets=("attn.qkv[q,v]",)))
    adapted = {n for n, p in model.named_parameters() if p.requires_grad and "lora" in n}
    assert {n.rsplit(".", 1)[0] for n in adapted} == {f"blocks.{i}.attn.{p}_proj" for i in (0, 1) for p in "qv"}
    whole = inject(tiny("eva02-unfused"), WeGeFTConfig(rank=2, targets=("attn.qkv",), layers=(1,)))
    assert {type(whole.blocks[1].attn.get_submodule(f"{p}_proj")).__name__ for p in "qkv"} == {"WeGeFTLinear"}
    assert type(whole.blocks[0].attn.q_proj) is nn.Linear


def test_deit_distilled_trains_both_heads_and_predicts_their_mean():
    model = inject(tiny("deit-distilled", num_classes=4), WeGeFTConfig(rank=4))
    head, head_dist = heads(model)
    assert head.out_features == head_dist.out_features == 4
    assert {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"} <= set(trainable_parameters(model))
    perturb(model)
    x = images_for(model)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = (head(tokens[:, 0]) + head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)
        model.train()
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)  # also while training (no drop path)


def test_vpt_skips_every_prefix_token():
    for name, prefix in (("dinov2-reg", 5), ("deit-distilled", 2), ("siglip", 0), ("clip", 1)):
        model = inject(tiny(name), VPTConfig(num_prompts=3))
        assert model.blocks[0].num_prefix_tokens == prefix


def test_the_guard_names_a_tensor_that_takes_no_part_and_changes_nothing():
    model = tiny("vit")
    model.requires_grad_(False)
    model.unused = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    model.head.requires_grad_(True)
    with pytest.raises(ValueError, match=r"mine: trainable tensor unused takes no part in the model's output"):
        require_participation(model, "mine")
    model = inject(tiny("vit").train(), LoRAConfig(rank=2))
    state = torch.random.get_rng_state()
    require_participation(model, "lora")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)


def _proj_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    handles = [
        m.register_forward_hook(lambda m, a, o: outputs.append(o))
        for n, m in model.named_modules()
        if n.endswith("attn.proj")
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return outputs


@pytest.mark.parametrize("name", ["dinov2-reg", "deit-distilled", "siglip", "eva02", "beit"])
def test_heatmaps_drop_the_model_prefix_tokens_on_its_own_grid(name):
    model = inject(tiny(name, dynamic_img_size=True) if name == "dinov2-reg" else tiny(name), WeGeFTConfig(rank=4))
    perturb(model)
    x = images_for(model)
    if name == "dinov2-reg":  # patch 14 at another, rectangular size: 3 x 4 patches
        x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outputs = _proj_outputs(model, x)
    scores = cluster_scores(model, x)
    prefix = model.num_prefix_tokens
    gh, gw = x.shape[-2] // model.patch_embed.patch_size[0], x.shape[-1] // model.patch_embed.patch_size[1]
    for i, y in enumerate(outputs):
        layer = model.blocks[i].attn.proj
        expected = (y[:, prefix:] @ (layer.weight @ layer.projections.phi)).transpose(1, 2).reshape(2, 4, gh, gw)
        torch.testing.assert_close(scores[i], expected, rtol=0, atol=1e-10)
    maps = cluster_heatmaps(model, x)
    assert all(m.shape == (2, 4, gh, gw) and m.min() >= 0 and m.max() <= 1 for m in maps.values())


@pytest.mark.parametrize("name", ["swin", "swinv2"])
@pytest.mark.parametrize("img_size", [32, 40])  # 40: a grid of 10, padded to windows of 4
def test_swin_heatmaps_map_windows_back_to_each_stage_grid(name, img_size):
    model = inject(tiny(name, img_size=img_size), WeGeFTConfig(rank=4))
    perturb(model)
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    blocks = [b for stage in model.layers for b in stage.blocks]
    inputs = []
    handles = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in blocks]
    scores = cluster_scores(model, x)
    for h in handles:
        h.remove()
    assert any(any(b.shift_size) for b in blocks)  # a shifted block is covered
    for i, (block, tokens) in enumerate(zip(blocks, inputs, strict=True)):
        # independent reference: the block's own attention output on its (B, H, W, C) grid, through C = W·φ
        with torch.no_grad():  # Swin normalizes before attention, Swin-V2 after it
            grid = block._attn(block.norm1(tokens) if name == "swin" else tokens)
        layer = block.attn.proj
        expected = (grid @ (layer.weight @ layer.projections.phi)).permute(0, 3, 1, 2)
        assert scores[i].shape == (2, 4, *tokens.shape[1:3])
        torch.testing.assert_close(scores[i], expected, rtol=0, atol=1e-10)
    side = img_size // 4
    assert [tuple(s.shape[-2:]) for s in scores.values()] == [(side, side)] * 2 + [((side + 1) // 2,) * 2] * 2


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_a_local_weights_file_loads_for_every_family(name, tmp_path):
    source = tiny(name, num_classes=7, seed=3).float()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    fam = family(name)
    model = create_backbone(fam.architecture, num_classes=3, weights=path, **fam.tiny)
    assert model.weights_source["kind"] == "file"
    head_names = {f"{n}." for n, m in model.named_modules() if any(m is h for h in heads(model))}
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(tuple(head_names)):
            assert torch.equal(loaded[key], value), key


def test_dinov2_weights_at_one_size_load_at_another(tmp_path):
    """timm resamples the position embeddings of a weights file made at 28 px for a model at 42 px."""
    source = tiny("dinov2-reg", seed=3).float()
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    fam = family("dinov2-reg")
    model = create_backbone(fam.architecture, num_classes=3, weights=path, **{**fam.tiny, "img_size": 42})
    assert model.pos_embed.shape[1] == 9 and source.pos_embed.shape[1] == 4
    assert model(torch.randn(1, 3, 42, 42)).shape == (1, 3)


def test_data_configs_come_from_each_family_tag():
    clip = data_config("vit_base_patch16_clip_224.openai")
    assert clip["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073)) and clip["interpolation"] == "bicubic"
    assert data_config("vit_base_patch16_siglip_224.webli")["mean"] == (0.5, 0.5, 0.5)
    assert data_config("vit_base_patch14_reg4_dinov2.lvd142m")["input_size"] == (3, 518, 518)
    assert data_config("vit_base_patch14_reg4_dinov2.lvd142m", img_size=224)["input_size"] == (3, 224, 224)
    assert data_config(tiny("swin"))["input_size"] == (3, 32, 32)


def test_every_family_builds_at_its_real_size_on_the_meta_device():
    for fam in FAMILIES:
        with torch.device("meta"):
            model = timm.create_model(fam.backbone.split(".")[0], num_classes=10)
        assert inject(model, WeGeFTConfig()).peft_config.method == "wegeft"
    assert set(BY_NAME) == {f.name for f in FAMILIES}
    with pytest.raises(ValueError, match="unknown backbone family 'dino'; families: vit, deit-distilled"):
        family("dino")


def test_the_readme_matrix_is_the_generated_one():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "support_matrix.py"), "--readme", str(REPO / "README.md"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| VPT-deep |" in result.stdout and "refused" in result.stdout


@pytest.mark.parametrize("name", ["deit-distilled", "dinov2-reg", "eva02", "swin", "siglip"])
def test_fit_trains_a_family_from_a_weights_file_and_its_adapter_rebuilds(name, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from wegeft_vision.methods import load_adapted_model
    from wegeft_vision.training import ClassificationModule

    fam = family(name)
    weights = tmp_path / "backbone.safetensors"
    source = tiny(name, num_classes=5, seed=3).float()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    torch.manual_seed(0)
    module = ClassificationModule(
        num_classes=3,
        backbone=fam.architecture,
        weights=str(weights),
        backbone_overrides=dict(fam.tiny),
        method=WeGeFTConfig(rank=2),
        lr=1e-2,
        epochs=2,
        warmup_epochs=1,
    )
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, *input_shape(source), generator=generator), torch.arange(8) % 3)
    psi = [p for n, p in module.network.named_parameters() if n.endswith("psi")][0].detach().clone()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert not torch.equal([p for n, p in module.network.named_parameters() if n.endswith("psi")][0], psi)
    adapter = module.save_adapter(tmp_path / "adapter.safetensors")
    rebuilt = load_adapted_model(adapter, weights=weights).eval()
    x = data.tensors[0][:2]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), module.network.eval()(x), rtol=0, atol=0)


def test_protocol_plans_each_family_with_its_timm_data_config(tmp_path, capsys):
    import json

    from wegeft_vision.cli import main

    def plan(backbone: str, *extra: str) -> dict:
        out = tmp_path / backbone
        args = ["protocol", "--benchmark", "vtab-1k", "--tasks", "cifar", "--methods", "wegeft", "--dry-run"]
        assert main([*args, "--backbone", backbone, "--out", str(out), *extra]) == 0
        return json.loads((out / "plan.json").read_text())[0]

    dinov2 = plan("vit_base_patch14_reg4_dinov2.lvd142m")
    assert dinov2["preprocessing"].startswith("authors_vtab:resize518:size518")
    at_224 = plan("vit_base_patch14_reg4_dinov2.lvd142m", "--set", "model.backbone_overrides={img_size: 224}")
    assert at_224["preprocessing"].startswith("authors_vtab:resize224:size224")
    assert "0.48145466" in plan("vit_base_patch16_clip_224.openai")["train_transform"]
    assert "mean=[0.5, 0.5, 0.5]" in plan("vit_base_patch16_siglip_224.webli")["train_transform"]
    args = ["protocol", "--benchmark", "vtab-1k", "--tasks", "cifar", "--methods", "vpt", "--dry-run"]
    assert main([*args, "--backbone", "beit_base_patch16_224.in22k_ft_in22k", "--out", str(tmp_path / "b")]) == 2
    assert "method vpt" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_peft_adapters_on_eva_fused_qkv_reach_the_output(kind):
    """peft's own wrappers are put back in timm's path too (its layers are not nn.Linear either)."""
    pytest.importorskip("peft")
    from wegeft_vision.methods import HFPeftConfig

    base = tiny("eva02")
    model = inject(copy.deepcopy(base), HFPeftConfig(kind=kind, targets=("attn.qkv",)))
    perturb(model)
    x = images_for(model)
    with torch.no_grad():
        logits = model(x)
        assert not torch.allclose(logits, base(x))
        torch.testing.assert_close(merge(model)(x), logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_a_linear_probe_trains_the_family_head_alone(name):
    """SigLIP's attention pool, CLIP's pre-norm, BEiT's fc_norm and every final norm stay frozen: only timm's
    classifier trains (DeiT-distilled: both of its heads)."""
    model = inject(tiny(name), LinearProbeConfig())
    head = {id(p) for h in heads(model) for p in h.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == head
    frozen = {"siglip": "attn_pool.", "clip": "norm_pre.", "beit": "fc_norm.", "swin": "norm."}
    if name in frozen:
        assert any(n.startswith(frozen[name]) for n, _ in model.named_parameters())


def test_vpt_on_eva_equals_timm_register_tokens_in_a_one_block_model():
    """With one block, VPT's prompts are exactly EVA's own register tokens (prefix tokens without position embedding or
    rotation, between the class token and the patches): timm's model with reg_token = prompts is the reference."""
    model = inject(tiny("eva02", depth=1, no_embed_class=True), VPTConfig(num_prompts=3))
    perturb(model)
    reference = tiny("eva02", depth=1, no_embed_class=True, num_reg_tokens=3)
    state = {k.replace("blocks.0.block.", "blocks.0."): v for k, v in model.state_dict().items()}
    prompts = state.pop("blocks.0.prompts")
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert missing == ["reg_token"] and not unexpected
    with torch.no_grad():
        reference.reg_token.copy_(prompts[None])
        x = images_for(model)
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=1e-12)
