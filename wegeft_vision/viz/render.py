"""Rendering of cluster heatmaps: colormap overlays on the de-normalized input (OpenCV) and PNG figures (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no display

from .heatmaps import upsample_maps

Colormap = int | str


def colormap_code(colormap: Colormap) -> int:
    """An OpenCV colormap code from a `cv2.COLORMAP_*` value or its name ("jet", "viridis", ...)."""
    if isinstance(colormap, str):
        code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
        if code is None:
            known = sorted(n[len("COLORMAP_") :].lower() for n in dir(cv2) if n.startswith("COLORMAP_"))
            raise ValueError(f"unknown colormap {colormap!r}; OpenCV knows {known}")
        return code
    if isinstance(colormap, bool) or not isinstance(colormap, int):
        raise TypeError(f"colormap must be a cv2.COLORMAP_* code or its name, got {colormap!r}")
    return colormap


def to_uint8_images(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """De-normalize model inputs back to displayable RGB images.

    Args:
        images: (B, 3, H, W) or (3, H, W), normalized as `(pixel - mean) / std` with pixels in [0, 1].
        mean: per-channel mean of that normalization (e.g. `data_config(model)["mean"]`); None means 0.
        std: per-channel std; None means 1.

    Returns:
        uint8 RGB array (B, H, W, 3), or (H, W, 3) for a single image.
    """
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    batch = batch.detach().to("cpu", torch.float64)
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != 3:
            raise ValueError(f"{name} must have one value per channel (3), got {list(values)}")
    mean_t = torch.tensor(mean if mean is not None else [0.0] * 3, dtype=torch.float64).view(1, 3, 1, 1)
    std_t = torch.tensor(std if std is not None else [1.0] * 3, dtype=torch.float64).view(1, 3, 1, 1)
    pixels = (batch * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).contiguous().numpy()
    return array[0] if single else array


def overlay(
    image: np.ndarray, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.6, colormap: Colormap = "jet"
) -> np.ndarray:
    """Blend a colormapped heatmap onto an image: alpha · colormap(heatmap) + (1 − alpha) · image.

    Args:
        image: uint8 RGB (H, W, 3).
        heatmap: (h, w) values in [0, 1], bilinearly upsampled to (H, W) when smaller or larger.
        alpha: weight of the heatmap, in [0, 1].
        colormap: a `cv2.COLORMAP_*` code or its name.

    Returns:
        uint8 RGB (H, W, 3).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    heat = torch.as_tensor(heatmap).detach().to("cpu", torch.float32)
    if heat.dim() != 2:
        raise ValueError(f"heatmap must have shape (h, w), got {tuple(heat.shape)}")
    if tuple(heat.shape) != image.shape[:2]:
        heat = upsample_maps(heat, image.shape[:2])
    levels = (heat.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    colored = cv2.cvtColor(cv2.applyColorMap(levels, colormap_code(colormap)), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(colored, alpha, image, 1.0 - alpha, 0.0)


def overlay_maps(
    images: torch.Tensor,
    maps: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.6,
    colormap: Colormap = "jet",
) -> np.ndarray:
    """Overlays of every map of every image: (B, 3, H, W) images and (B, r, gh, gw) maps give (B, r, H, W, 3) uint8."""
    if maps.dim() != 4 or images.dim() != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected images (B, 3, H, W) and maps (B, r, gh, gw) with the same B, "
            f"got {tuple(images.shape)} and {tuple(maps.shape)}"
        )
    pictures = to_uint8_images(images, mean, std)
    size = pictures.shape[1:3]
    upsampled = upsample_maps(maps.detach().to("cpu", torch.float32), size)
    return np.stack(
        [np.stack([overlay(p, m, alpha, colormap) for m in ms]) for p, ms in zip(pictures, upsampled, strict=True)]
    )


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 RGB (H, W, 3) array as a PNG (or any format OpenCV infers from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path} (is its suffix an image format OpenCV knows?)")
    return path


def save_heatmap_grid(
    image: torch.Tensor,
    maps: Mapping[int, torch.Tensor],
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    clusters: Sequence[int] | None = None,
    alpha: float = 0.6,
    colormap: Colormap = "jet",
    title: str | None = None,
    cell_inches: float = 1.5,
    dpi: int = 100,
) -> Path:
    """One image's figure: a row per block (the input, then one overlay per cluster), saved as PNG.

    Args:
        image: one normalized input (3, H, W).
        maps: {block index: (r, gh, gw)} for this image, e.g. `{i: m[b] for i, m in cluster_heatmaps(...).items()}`.
        path: where to write the PNG; parent folders are created.
        mean: normalization mean of the input (see `to_uint8_images`).
        std: normalization std of the input.
        clusters: which clusters to show, in order; None shows all r.
        alpha: weight of the heatmap in the overlay.
        colormap: a `cv2.COLORMAP_*` code or its name.
        title: figure title.
        cell_inches: side of one cell; the PNG is (rows · cell · dpi) × ((1 + clusters) · cell · dpi) pixels.
        dpi: pixels per inch.
    """
    if not maps:
        raise ValueError("maps is empty: give at least one block's (r, gh, gw) maps")
    if image.dim() != 3:
        raise ValueError(f"image must be one input (3, H, W), got shape {tuple(image.shape)}")
    picture = to_uint8_images(image, mean, std)
    rank = next(iter(maps.values())).shape[0]
    shown = list(range(rank)) if clusters is None else [int(k) for k in clusters]
    bad = [k for k in shown if not 0 <= k < rank]
    if bad or not shown:
        raise ValueError(f"clusters {bad or shown} are not clusters of these maps (0..{rank - 1})")
    cells = []
    for layer, layer_maps in sorted(maps.items()):
        if layer_maps.dim() != 3:
            raise ValueError(f"maps[{layer}] must have shape (r, gh, gw), got {tuple(layer_maps.shape)}")
        cells += [picture] + [overlay(picture, layer_maps[k], alpha, colormap) for k in shown]
    rows, cols = len(maps), 1 + len(shown)
    # one image and a few labels: drawing rows x cols axes instead takes seconds per figure
    figure = Figure(figsize=(cols * cell_inches, rows * cell_inches), dpi=dpi)
    left, right, bottom, top = 0.05, 0.99, 0.01, 0.9 if title else 0.94
    axes = figure.add_axes((left, bottom, right - left, top - bottom))
    axes.imshow(tile(np.stack(cells), columns=cols, padding=2), aspect="auto", interpolation="nearest")
    axes.set_axis_off()
    width, height = (right - left) / cols, (top - bottom) / rows
    for col in range(cols):
        label = "input" if col == 0 else f"cluster {shown[col - 1]}"
        figure.text(left + (col + 0.5) * width, top + 0.005, label, ha="center", va="bottom", fontsize=8)
    for row, layer in enumerate(sorted(maps)):
        y = top - (row + 0.5) * height
        figure.text(left - 0.005, y, f"block {layer}", rotation=90, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def tile(pictures: np.ndarray, columns: int = 8, padding: int = 2, fill: int = 255) -> np.ndarray:
    """Lay (N, H, W, 3) pictures out row by row on a `columns`-wide grid, `padding` pixels of `fill` between them."""
    if pictures.ndim != 4 or len(pictures) == 0:
        raise ValueError(f"pictures must be a non-empty (N, H, W, 3) array, got shape {pictures.shape}")
    if columns < 1 or padding < 0:
        raise ValueError(f"columns must be >= 1 and padding >= 0, got columns={columns}, padding={padding}")
    n, height, width, channels = pictures.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    canvas = np.full(
        (rows * height + (rows - 1) * padding, columns * width + (columns - 1) * padding, channels), fill, np.uint8
    )
    for i, picture in enumerate(pictures):
        top, left = (i // columns) * (height + padding), (i % columns) * (width + padding)
        canvas[top : top + height, left : left + width] = picture
    return canvas


def save_cluster_mosaic(
    images: torch.Tensor,
    maps: torch.Tensor,
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    columns: int = 8,
    padding: int = 2,
    alpha: float = 0.6,
    colormap: Colormap = "jet",
) -> Path:
    """One (block, cluster) over many images, e.g. of one class, to see whether it follows the same part (Figure 5).

    Args:
        images: normalized inputs (B, 3, H, W).
        maps: that cluster's map per image (B, gh, gw), e.g. `cluster_heatmaps(...)[block][:, cluster]`.
        path: where to write the PNG; it is exactly rows · H + (rows − 1) · padding pixels high and
            columns · W + (columns − 1) · padding wide, with rows = ceil(B / columns).
        mean: normalization mean of the inputs (see `to_uint8_images`).
        std: normalization std of the inputs.
        columns: pictures per row (fewer when B is smaller).
        padding: white pixels between pictures.
        alpha: weight of the heatmap in the overlay.
        colormap: a `cv2.COLORMAP_*` code or its name.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must hold one cluster's map per image, (B, gh, gw), got {tuple(maps.shape)}")
    pictures = overlay_maps(images, maps.unsqueeze(1), mean, std, alpha, colormap)[:, 0]  # (B, H, W, 3)
    return save_image(tile(pictures, columns, padding), path)
