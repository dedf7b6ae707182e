"""Preprocessing presets: `paper`, `vpt` and the authors' per-benchmark pipelines (`authors_vtab`, `authors_fgvc`).

Mean and std always come from the backbone's timm data config, as in the authors' code (timm's
`resolve_data_config(model=backbone)`; `vit_base_patch16_224.augreg_in21k`: mean = std = 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TVF

from .registry import FGVC

AUTHORS = "authors"  # the authors' pipeline of the benchmark: `authors_fgvc` on FGVC, `authors_vtab` on the others
PRESETS = ("paper", "vpt", AUTHORS, "authors_vtab", "authors_fgvc")
VPT_CROP_PCT = 0.875  # VPT: resize to 256, crop 224
# How the geometry resizes: a square through torchvision (antialiased); the shorter side through PIL, as torchvision's
# `Resize(int)` does on the PIL images of the authors' FGVC loader; TF1's `resize_bilinear` (the authors' VTAB loader).
SQUARE, PIL_SHORTER, TF1 = "square", "pil-shorter", "tf1"


def tf_bilinear_resize(
    images: torch.Tensor, size: int | tuple[int, int], half_pixel_centers: bool = False
) -> torch.Tensor:
    """TensorFlow's bilinear `ResizeBilinear` (align_corners=False, no antialiasing) of float `(N, C, H, W)` images.

    With `half_pixel_centers=False` (TF1's default, what `tf.compat.v1.image.resize` runs) output pixel `d` reads the
    source at `s = d * in / out`; with True (TF2's `tf.image.resize(..., antialias=False)`, the same as PyTorch's
    `interpolate(mode="bilinear", align_corners=False)`) at `s = (d + 0.5) * in / out - 0.5`. Either way the taps are
    `max(floor(s), 0)` and `min(ceil(s), in - 1)` with weight `s - floor(s)`; values are neither rounded nor clipped.
    Positions and weights are float32, as TF computes them (on float32 images the result is TF's to the bit).

    Args:
        images: `(N, C, H, W)` or `(C, H, W)` floating-point images, any value range.
        size: output side, or `(height, width)`.
        half_pixel_centers: TF2's pixel centres instead of TF1's.

    Raises:
        ValueError: images that are not 3-D or 4-D floating-point tensors, or a size below 1.
    """
    if images.dim() not in (3, 4) or not images.is_floating_point():
        raise ValueError(f"expected float (N, C, H, W) or (C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if min(out_h, out_w) < 1:
        raise ValueError(f"resize to {out_h}x{out_w}: sides should be at least 1")
    (top, bottom, dy), (left, right, dx) = (
        _taps(images.shape[-2], out_h, half_pixel_centers, images.device),
        _taps(images.shape[-1], out_w, half_pixel_centers, images.device),
    )
    dy, dx = dy.to(images.dtype).unsqueeze(-1), dx.to(images.dtype)  # (out_h, 1), (out_w,)
    # TF's compute_lerp: top = tl + (tr - tl) * dx, bottom likewise, then top + (bottom - top) * dy. The width pass
    # runs once per input row (the same numbers as per output row), so the slow last-axis gathers see H rows.
    lo, hi = images.index_select(-1, left), images.index_select(-1, right)
    rows = lo + (hi - lo) * dx  # (.., H, out_w)
    upper, lower = rows.index_select(-2, top), rows.index_select(-2, bottom)
    return upper + (lower - upper) * dy


def _taps(in_size: int, out_size: int, half_pixel_centers: bool, device: torch.device):
    """Source taps and weights along one axis: (lower index, upper index, weight of the upper one), in float32 as TF."""
    scale = torch.tensor(in_size, dtype=torch.float32, device=device) / out_size  # TF: in / static_cast<float>(out)
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    src = (dst + 0.5) * scale - 0.5 if half_pixel_centers else dst * scale
    floor = src.floor()
    lower = floor.clamp(0, in_size - 1).long()
    upper = src.ceil().clamp(0, in_size - 1).long()
    return lower, upper, src - floor


@dataclass(frozen=True)
class TF1Resize:
    """uint8 `(3, H, W)` -> float32 `(3, size, size)` in [0, 1], as the authors' VTAB-1k loader: TF1's bilinear resize
    of the 0..255 values (as float, not rounded), then / 255 (their `to_torch_imgs`)."""

    size: int

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return tf_bilinear_resize(image.to(torch.float32), self.size).div_(255.0)


@dataclass(frozen=True)
class PILShorterResize:
    """uint8 `(3, H, W)` -> uint8: the shorter side to `size` (the longer `int(size * long / short)`), bilinear, through
    PIL as torchvision's `Resize(size)` does on a PIL image (PIL's filter widens when it shrinks: antialiased)."""

    size: int

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())  # RGB, (H, W, 3)
        return TVF.pil_to_tensor(TVF.resize(pil, self.size, interpolation=InterpolationMode.BILINEAR))


@dataclass(frozen=True)
class Preprocessing:
    """Image pipelines of one preset, on uint8 `(3, H, W)` tensors.

    The pipeline splits into a deterministic geometric part (what the decoded-tensor cache stores, when it gives uint8),
    an optional random part (train augmentation) and normalization (float, mean/std), which the cache applies per batch.

    Attributes:
        preset: `paper`, `vpt`, `authors_vtab` or `authors_fgvc` (`authors` is resolved per benchmark).
        size: output side (the backbone's input size).
        resize: side of the resize before any crop (`size` when nothing is cropped).
        interpolation: timm/torchvision name (`bicubic`, `bilinear`, ...).
        mean: per-channel mean, in [0, 1] units.
        std: per-channel std, in [0, 1] units.
        augment: random crop and horizontal flip on the training split.
        resize_mode: `square` (torchvision, antialiased, uint8), `pil-shorter` (the shorter side to `resize` through
            PIL, uint8) or `tf1` (TF1's bilinear on floats: the geometry gives float32 in [0, 1], never cached).
    """

    preset: str
    size: int
    resize: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    resize_mode: str = SQUARE

    def geometry(self, train: bool) -> v2.Compose:
        """The deterministic part: resize, then a centre crop where the preset crops (uint8 out, float32 for `tf1`)."""
        if self.resize_mode == TF1:
            return v2.Compose([TF1Resize(self.size)])
        if self.resize_mode == PIL_SHORTER:
            ops: list[Any] = [PILShorterResize(self.resize)]
        else:
            mode = InterpolationMode(self.interpolation)
            ops = [v2.Resize((self.resize, self.resize), interpolation=mode, antialias=True)]
        if (self.resize != self.size or self.resize_mode == PIL_SHORTER) and not (train and self.augment):
            ops.append(v2.CenterCrop(self.size))
        return v2.Compose(ops)

    def augmentation(self, train: bool) -> v2.Compose | None:
        """The random part of the training pipeline (random crop, horizontal flip with p = 0.5), or None."""
        if not (train and self.augment):
            return None
        return v2.Compose([v2.RandomCrop(self.size), v2.RandomHorizontalFlip(0.5)])

    def normalize(self) -> v2.Compose:
        """uint8 -> float32 in [0, 1] (float input passes as is) -> (x - mean) / std; on images and on batches."""
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
        """Whether the split's geometry can be stored as uint8: no random part, and not TF1's unrounded floats."""
        return self.augmentation(train) is None and self.resize_mode != TF1

    def describe(self, train: bool) -> str:
        """A stable text of the geometric part, starting with the preset's name: cache keys and the results' column."""
        method = self.interpolation if self.resize_mode == SQUARE else f"{self.interpolation}-{self.resize_mode}"
        return f"{self.preset}:resize{self.resize}:size{self.size}:{method}:crop{int(not train)}"


def preprocessing(preset: str, data_config: Mapping[str, Any], benchmark: str = "vtab-1k") -> Preprocessing:
    """The preset's pipelines for a backbone's data config (`backbones.data_config`).

    `paper`: resize to the input size (224x224) with the backbone's interpolation, no augmentation, on both benchmarks.
    `vpt` (Jia et al., 2022): on FGVC, train = resize 256, random crop 224, horizontal flip and
    eval = resize 256, centre crop 224; on VTAB-1k the same as `paper`.
    `authors_vtab` (the authors' `tf_dataset.py`): TF1's bilinear resize (`tf.compat.v1.image.resize`: no half-pixel
    centres, no antialiasing) of the 0..255 values to the input size, / 255, normalize; no augmentation.
    `authors_fgvc` (the authors' `transforms.py` on PIL images): train = shorter side to 256 (PIL bilinear),
    random crop 224, horizontal flip 0.5; eval = shorter side to 256, centre crop 224; then / 255, normalize. Their
    table (224 <- 256, 384 <- 438, 448 <- 512) is `resize = size * 256 // 224`, applied here to any input size.
    `authors`: `authors_fgvc` on FGVC, `authors_vtab` on everything else (VTAB-1k, folders of one's own).

    Args:
        preset: one of `PRESETS`.
        data_config: timm data config with `input_size`, `interpolation`, `mean`, `std`.
        benchmark: the data's format: `vtab-1k`, `fgvc` or `imagefolder`.

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
    if preset == AUTHORS:
        preset = "authors_fgvc" if benchmark == FGVC else "authors_vtab"
    size = int(height)
    stats = {"mean": tuple(float(m) for m in data_config["mean"]), "std": tuple(float(s) for s in data_config["std"])}
    if preset == "authors_vtab":
        return Preprocessing(preset, size, size, "bilinear", **stats, resize_mode=TF1)
    if preset == "authors_fgvc":
        resize = size * 256 // 224
        return Preprocessing(preset, size, resize, "bilinear", **stats, augment=True, resize_mode=PIL_SHORTER)
    crop = preset == "vpt" and benchmark == FGVC
    resize = round(size / VPT_CROP_PCT) if crop else size
    return Preprocessing(preset, size, resize, interpolation, **stats, augment=crop)
