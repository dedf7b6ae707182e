"""The mini-ViT shipped with the package: a 32-px, patch-8, width-192, 6-block timm `VisionTransformer`.

Its module names are those of ViT-B/16 (`blocks.*.attn.proj`, ...), so every method, target pattern and the heatmaps
apply unchanged; its head reads the average of the output tokens (`global_pool="avg"`). The `procedural` weights were
pretrained by `scripts/pretrain_mini_vit.py` on procedural dead-leaves images (`wegeft_vision.data.leaves`, 200
classes, no photograph) with a pixel-reconstruction term, and lie in `weights/`; timm loads them offline through its
usual pretrained path (`pretrained_cfg["file"]`), so `create_backbone("vit_mini_patch8_32.procedural",
pretrained=True)` and `--backbone vit_mini_patch8_32.procedural` work like any hub tag, with no download.

The earlier `glyphs` weights (class-token head, glyphs whose colours were jittered away) transferred worse than random
init to colour photographs and are no longer shipped: `RETIRED` says what to use instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

ARCHITECTURE = "vit_mini_patch8_32"
TAG = "procedural"
NAME = f"{ARCHITECTURE}.{TAG}"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / f"{NAME}.safetensors"
ARCHITECTURE_ARGS = dict(img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3, global_pool="avg")
# The data config stored with the weights (what `resolve_model_data_config` reads); the pretraining script normalizes
# its glyphs with the same values.
DATA_CONFIG = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
SOURCE_CLASSES = 300  # 200 dead-leaves classes, then 100 glyph classes
RETIRED = {
    f"{ARCHITECTURE}.glyphs": f"no longer shipped (it lost to random init on colour photographs); use {NAME} (a copy "
    f"of the old file loads as --weights of {ARCHITECTURE} with model.backbone_overrides={{global_pool: token}})",
}

# timm's `register_model` reads the module's `default_cfgs` (one entry per architecture.tag).
default_cfgs = generate_default_cfgs(
    {
        NAME: {
            "file": str(WEIGHTS_FILE),
            "num_classes": SOURCE_CLASSES,
            "crop_pct": 1.0,
            "crop_mode": "center",
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "mit",
            "description": "pretrained on procedural dead-leaves images by scripts/pretrain_mini_vit.py",
            **DATA_CONFIG,
        }
    }
)


@register_model
def vit_mini_patch8_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Mini/8 at 32 px (2.7M parameters): ViT-B/16's structure with 6 blocks of width 192 and 3 heads."""
    return build_model_with_cfg(
        VisionTransformer,
        ARCHITECTURE,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**ARCHITECTURE_ARGS, **kwargs},
    )
