"""WeGeFT token-clustering heatmaps: C = W·φ (d_out × r) turns the output tokens ŷ of `attn.proj` into r maps H = ŷ·C.

Only the d_in form has such a head (its φ is (d_in, r) and W·φ is (d_out, r)); the d_out form is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_reverse
from torch import nn

from ..methods import PromptedBlock, WeGeFTLinear, method_config

TARGET = "attn.proj"


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks in order: a ViT's `blocks` (ViT, DeiT, DINOv2, CLIP, SigLIP, EVA, BEiT), or a Swin's
    stages' blocks one after the other (index 0 is the first block of the first stage)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return list(blocks)
    stages = getattr(model, "layers", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and all(hasattr(s, "blocks") for s in stages):
        return [block for stage in stages for block in stage.blocks]
    raise TypeError(
        f"cluster heatmaps need a timm ViT with a `blocks` sequence or a Swin with `layers[i].blocks`, "
        f"got {type(model).__name__}"
    )


def _inner(block: nn.Module) -> nn.Module:
    return block.block if isinstance(block, PromptedBlock) else block


def _windowed(block: nn.Module) -> bool:
    """A Swin block: attention within (shifted) windows of a (B, H, W, C) token grid."""
    return hasattr(block, "window_size") and hasattr(block, "shift_size")


def _projection(block: nn.Module) -> tuple[nn.Module | None, int]:
    """The block's `attn.proj` and the number of VPT prompt tokens it sees."""
    prompts = block.num_prompts if isinstance(block, PromptedBlock) else 0
    return getattr(getattr(_inner(block), "attn", None), "proj", None), prompts


def heatmap_layers(model: nn.Module) -> list[int]:
    """Indices of the blocks whose `attn.proj` carries WeGeFT (either form); the default `layers` of the heatmaps."""
    return [i for i, block in enumerate(_blocks(model)) if isinstance(_projection(block)[0], WeGeFTLinear)]


def _select(model: nn.Module, layers: Sequence[int] | None) -> dict[int, tuple[WeGeFTLinear, int, nn.Module]]:
    blocks = _blocks(model)
    available = heatmap_layers(model)
    if not available:
        config = method_config(model)
        if config is None:
            carries = "no method"
        elif config.method == "wegeft":
            carries = f"WeGeFT on {tuple(getattr(config, 'targets', ()))}, not on {TARGET}"
        else:
            carries = f"a {config.method!r} method"
        raise ValueError(
            f"cluster heatmaps need WeGeFT on {TARGET}; the model carries {carries} "
            f"(inject(model, WeGeFTConfig()) targets {TARGET} by default)"
        )
    if layers is None:
        chosen = available
    else:
        if isinstance(layers, int):
            layers = [layers]
        n = len(blocks)
        bad = [i for i in layers if not -n <= int(i) < n]
        if bad:
            raise ValueError(f"layers {bad} are not blocks of this model (it has blocks 0..{n - 1})")
        chosen = sorted({int(i) % n for i in layers})
        if not chosen:
            raise ValueError("layers is empty: give at least one block index, or None for every adapted block")
        missing = [i for i in chosen if i not in available]
        if missing:
            raise ValueError(f"blocks {missing} have no WeGeFT on {TARGET}; blocks with it: {available}")
    selected = {}
    for i in chosen:
        layer, prompts = _projection(blocks[i])
        if layer.projections.variant != "d_in":
            raise ValueError(
                f"block {i}: {TARGET} uses WeGeFT's {layer.projections.variant!r} form; cluster heatmaps need the "
                "'d_in' form, whose C = W·φ is a (d_out × r) head over the output tokens"
            )
        selected[i] = (layer, prompts, _inner(blocks[i]))
    return selected


def cluster_head(layer: WeGeFTLinear) -> torch.Tensor:
    """C = W·φ, (d_out, r), with W the frozen pretrained weight (also while merged) and φ the layer's projection."""
    if layer.projections.variant != "d_in":
        raise ValueError(f"C = W·φ needs WeGeFT's 'd_in' form, got {layer.projections.variant!r}")
    return layer.weight @ layer.projections.phi


def _grid(
    model: nn.Module, num_patches: int, grid_size: int | Sequence[int] | None, image_size: Sequence[int]
) -> tuple[int, int]:
    """The patch grid of `num_patches` tokens: `grid_size` when given, else the patch embedding's grid for this image
    size (timm's `dynamic_feat_size`: patch 14, any `img_size`, rectangular inputs), else a square."""
    if grid_size is not None:
        gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else (int(g) for g in grid_size)
        if gh * gw != num_patches:
            raise ValueError(
                f"grid_size {(gh, gw)} holds {gh * gw} tokens, but the layer has {num_patches} patch tokens"
            )
        return gh, gw
    patch_embed = getattr(model, "patch_embed", None)
    if hasattr(patch_embed, "dynamic_feat_size"):
        gh, gw = (int(g) for g in patch_embed.dynamic_feat_size(tuple(image_size)))
        if gh * gw == num_patches:
            return gh, gw
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    raise ValueError(
        f"the {num_patches} patch tokens do not form a square grid: pass grid_size=(rows, columns) explicitly"
    )


def _unwindow(scores: torch.Tensor, block: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """A Swin block's per-window token scores (B·nW, wh·ww, r) back on its (B, r, H, W) token grid: the inverse of
    the block's cyclic shift, padding and window partition (timm's `_attn`)."""
    wh, ww = block.window_size
    height, width = grid
    padded = (height + (-height) % wh, width + (-width) % ww)
    windows = scores.reshape(-1, wh, ww, scores.shape[-1])
    full = window_reverse(windows, (wh, ww), *padded)[:, :height, :width]
    if any(block.shift_size):
        full = torch.roll(full, shifts=tuple(block.shift_size), dims=(1, 2))
    return full.permute(0, 3, 1, 2)


def normalize_maps(scores: torch.Tensor, threshold: float | None = 0.5) -> torch.Tensor:
    """Min-max normalize each map over its last two dims to [0, 1], then zero the values below `threshold`.

    Args:
        scores: maps of shape (..., gh, gw).
        threshold: values below it become 0 after normalization; None keeps the normalized maps. A constant map,
            which has no range to normalize, becomes all zeros.
    """
    _check_threshold(threshold)
    flat = scores.flatten(-2)  # (..., gh * gw)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    normalized = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1), 0)
    if threshold is not None:
        normalized = normalized.masked_fill(normalized < threshold, 0)
    return normalized.view_as(scores)


def _check_threshold(threshold: float | None) -> None:
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1] or None, got {threshold!r}")


def cluster_scores(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[int] | None = None,
    frozen: bool = False,
    grid_size: int | Sequence[int] | None = None,
) -> dict[int, torch.Tensor]:
    """The raw maps H = ŷ·C per block, before normalization; see `cluster_heatmaps` for the arguments.

    Returns:
        {block index: (B, r, gh, gw)} in float32 (float64 for a float64 model), on the model's device.
    """
    selected = _select(model, layers)
    windowed = any(_windowed(block) for _, _, block in selected.values())
    num_prefix = 0 if windowed else getattr(model, "num_prefix_tokens", None)
    if not isinstance(num_prefix, int):
        raise TypeError(f"cluster heatmaps need a timm ViT with `num_prefix_tokens`, got {type(model).__name__}")
    reference = next(model.parameters())
    if images.is_floating_point():
        images = images.to(device=reference.device, dtype=reference.dtype)
    raw: dict[int, torch.Tensor] = {}
    grids: dict[int, tuple[int, int]] = {}

    def capture(index: int):
        def hook(layer: WeGeFTLinear, args: tuple, output: torch.Tensor) -> None:
            # frozen: x W^T + b on the layer's raw input; else the adapted (or merged, which equals it) output.
            y = F.linear(args[0], layer.weight, layer.base.bias) if frozen else output  # (B, T, d_out)
            dtype = torch.promote_types(y.dtype, torch.float32)
            raw[index] = y.to(dtype) @ cluster_head(layer).to(dtype)  # (B, T, r)

        return hook

    def grid_of(index: int):
        def hook(block: nn.Module, args: tuple) -> None:
            grids[index] = tuple(args[0].shape[1:3])  # a Swin block's input is (B, H, W, C)

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [layer.register_forward_hook(capture(i)) for i, (layer, _, _) in selected.items()]
    handles += [b.register_forward_pre_hook(grid_of(i)) for i, (_, _, b) in selected.items() if _windowed(b)]
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode

    maps = {}
    for i, (_, prompts, block) in selected.items():
        if i not in raw:
            raise RuntimeError(f"block {i}: {TARGET} did not run during the forward pass")
        if _windowed(block):
            maps[i] = _unwindow(raw[i], block, grids[i])  # each stage its own grid; grid_size does not apply
            continue
        tokens = raw[i][:, num_prefix + prompts :]  # drop [prefix tokens, VPT prompts]: (B, N, r)
        gh, gw = _grid(model, tokens.shape[1], grid_size, images.shape[-2:])
        maps[i] = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)  # raster order
    return maps


def cluster_heatmaps(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[int] | None = None,
    threshold: float | None = 0.5,
    frozen: bool = False,
    grid_size: int | Sequence[int] | None = None,
) -> dict[int, torch.Tensor]:
    """WeGeFT's token-clustering maps of `images`, one forward pass, in eval mode and without gradients.

    For each chosen block, ŷ is the full output of its adapted `attn.proj` (bias included) and C = W·φ its cluster
    head; H = ŷ·C over the patch tokens (the model's prefix tokens, i.e. class, register and distillation tokens, and
    VPT prompts dropped), in raster order on the patch grid of these images (patch 14 and any input size included).
    On a Swin, the window tokens are put back on each stage's grid (shift and padding undone), so a block's maps
    are as coarse as its stage (indices count blocks across stages). Each of the r maps is min-max normalized to
    [0, 1] over its grid, then thresholded. The model's training flags are restored afterwards; a merged model gives
    the same maps as an unmerged one.

    Args:
        model: a timm ViT (DeiT, DINOv2, CLIP, SigLIP, EVA, BEiT included) or Swin with WeGeFT (d_in form) on
            `attn.proj`.
        images: a normalized batch (B, 3, H, W), moved to the model's device and dtype.
        layers: block indices (negative ones count from the end); None means every block with WeGeFT.
        threshold: normalized values below it are set to 0; None keeps the normalized maps.
        frozen: use the frozen layer's output x·Wᵀ + b (before the update) instead of ŷ, for comparison.
        grid_size: (rows, columns) of the patch grid, or one int for a square one, when the patch embedding cannot
            tell it (ignored on a Swin).

    Returns:
        {block index: (B, r, gh, gw)} with values in [0, 1], on the model's device.

    Raises:
        ValueError: the model has no WeGeFT on `attn.proj`, a chosen block uses the d_out form or has no WeGeFT, the
            grid is not square and `grid_size` is not given, or `threshold` is outside [0, 1].
    """
    _check_threshold(threshold)
    scores = cluster_scores(model, images, layers=layers, frozen=frozen, grid_size=grid_size)
    return {i: normalize_maps(h, threshold) for i, h in scores.items()}


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (half-pixel centers, as OpenCV's INTER_LINEAR) of (..., gh, gw) maps to `size` (H, W)."""
    if maps.dim() < 2:
        raise ValueError(f"maps must have shape (..., gh, gw), got {tuple(maps.shape)}")
    height, width = (int(s) for s in size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    if not flat.is_floating_point():
        flat = flat.float()
    up = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return up.reshape(*lead, height, width)
