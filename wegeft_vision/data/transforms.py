"""Preprocessing presets `paper` and `vpt`; size, mean, std and interpolation come from the backbone's timm config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg
from torchvision.transforms import InterpolationMode, v2

from .registry import FGVC

PRESETS = ("paper", "vpt")
VPT_CROP_PCT = 0.875  # VPT: resize to 256, crop 224


@dataclass(frozen=True)
class Preprocessing:
    """Image pipelines of one preset, on uint8 `(3, H, W)` tensors.

    The pipeline splits into a deterministic geometric part (what the decoded-tensor cache stores), an optional random
    part (train augmentation) and normalization (float, mean/std), which the cache applies per batch.

    Attributes:
        preset: `paper` or `vpt`.
        size: output side (the backbone's input size).
        resize: side of the square resize before any crop (`size` when nothing is cropped).
        interpolation: timm/torchvision name (`bicubic`, `bilinear`, ...).
        mean: per-channel mean, in [0, 1] units.
        std: per-channel std, in [0, 1] units.
        augment: random crop and horizontal flip on the training split.
    """

    preset: str
    size: int
    resize: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False

    def geometry(self, train: bool) -> v2.Compose:
        """The deterministic uint8 -> uint8 part: square resize, then a centre crop where the preset crops."""
        mode = InterpolationMode(self.interpolation)
        ops: list[Any] = [v2.Resize((self.resize, self.resize), interpolation=mode, antialias=True)]
        if self.resize != self.size and not (train and self.augment):
            ops.append(v2.CenterCrop(self.size))
        return v2.Compose(ops)

    def augmentation(self, train: bool) -> v2.Compose | None:
        """The random part of the training pipeline (random crop, horizontal flip), or None."""
        if not (train and self.augment):
            return None
        return v2.Compose([v2.RandomCrop(self.size), v2.RandomHorizontalFlip()])

    def normalize(self) -> v2.Compose:
        """uint8 -> float32 in [0, 1] -> (x - mean) / std; works on single images and on batches."""
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))])

    def normalize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """`normalize()` fused for uint8 batches `(B, 3, H, W)`, on their device: x * (1 / (255 std)) - mean / std."""
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        return images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def pipeline(self, train: bool) -> v2.Compose:
        """The whole pipeline for one decoded image."""
        parts = [self.geometry(train), self.augmentation(train), self.normalize()]
        return v2.Compose([p for p in parts if p is not None])

    def cacheable(self, train: bool) -> bool:
        """Whether the split's pipeline has no random part, so decoded and resized tensors can be stored."""
        return self.augmentation(train) is None

    def describe(self, train: bool) -> str:
        """A stable text of the geometric part, used in cache keys."""
        return f"{self.preset}:resize{self.resize}:size{self.size}:{self.interpolation}:crop{int(not train)}"


def preprocessing(preset: str, data_config: Mapping[str, Any], benchmark: str = "vtab-1k") -> Preprocessing:
    """The preset's pipelines for a backbone's data config (`backbones.data_config(model)` or `backbone_data_config`).

    `paper` (the authors' code): resize to the input size (224x224), no augmentation, on both benchmarks.
    `vpt` (Jia et al., 2022): on FGVC, train = resize 256, random crop 224, horizontal flip and
    eval = resize 256, centre crop 224; on VTAB-1k the same as `paper`.

    Args:
        preset: `paper` or `vpt`.
        data_config: timm data config with `input_size`, `interpolation`, `mean`, `std`.
        benchmark: `vtab-1k` or `fgvc`.

    Raises:
        ValueError: an unknown preset, a non-square input size or an interpolation torchvision does not know.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; expected one of {', '.join(PRESETS)}")
    missing = [k for k in ("input_size", "interpolation", "mean", "std") if k not in data_config]
    if missing:
        raise ValueError(f"data config lacks {', '.join(missing)}; pass timm's resolve_model_data_config(model)")
    _, height, width = data_config["input_size"]
    if height != width:
        raise ValueError(f"input size {height}x{width} is not square; the presets expect a square input")
    interpolation = str(data_config["interpolation"])
    try:
        InterpolationMode(interpolation)
    except ValueError as err:
        names = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"interpolation {interpolation!r} is not one of {names}") from err
    crop = preset == "vpt" and benchmark == FGVC
    return Preprocessing(
        preset=preset,
        size=int(height),
        resize=round(height / VPT_CROP_PCT) if crop else int(height),
        interpolation=interpolation,
        mean=tuple(float(m) for m in data_config["mean"]),
        std=tuple(float(s) for s in data_config["std"]),
        augment=crop,
    )


def backbone_data_config(name: str) -> dict[str, Any]:
    """The data config stored with a timm model's pretrained tag, read without building the model.

    Args:
        name: `architecture[.tag]`, e.g. `vit_base_patch16_224.augreg_in21k`.

    Raises:
        ValueError: timm knows no pretrained config of that name.
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained config for {name!r}; expected architecture[.tag]")
    return resolve_data_config(pretrained_cfg=cfg.to_dict())
