"""A saved adapter's WeGeFT cluster heatmaps over a set of images, written to a folder: per-image grids,
per-(block, cluster) mosaics, localization scores (IoU against per-pixel masks, or CUB keypoint hits) and, for a PaCa
adapter, its cluster figures. `wegeft-vision visualize` parses its options into `list_items` and `write_heatmaps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import data_config
from ..data import ImageListDataset, preprocessing
from ..data.registry import VTAB1K
from ..data.tasks import Task
from ..methods import load_adapted_model
from .clusters import save_paca_clusters
from .cub_parts import CubParts, read_cub_parts
from .heatmaps import cluster_heatmaps
from .render import save_cluster_mosaic, save_heatmap_grid
from .scores import KeypointTarget, MaskTarget, PartScore, best_clusters, localization_scores, write_csv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
TARGET_PART = {1: "target"}  # synthetic masks: 1 is the labelled (largest) object, 2.. the distractors


@dataclass(frozen=True)
class Item:
    """One image to visualize: its file, its label (None in a bare folder) and the stem of its output files."""

    path: Path
    label: int | None
    name: str


@dataclass(frozen=True)
class HeatmapOptions:
    """What `write_heatmaps` draws and scores (the options of `wegeft-vision visualize`, checked there).

    Attributes:
        layers: block indices (None: every block with WeGeFT).
        limit: at most this many images (after `correct_only`).
        correct_only: only images the model classifies correctly (needs labels).
        batch_size: images per forward pass.
        threshold: normalized map values below it are zeroed in the pictures, and maps are binarized at it for IoU.
        mosaic_images: images per (block, cluster) mosaic; 0: no mosaics.
        grids: per-image grids for the first N images only (None: every image).
        score: also write `scores.csv` and `best_clusters.csv`.
        clusters: also draw a PaCa adapter's clusters (`clusters/<layer>.png` and `.npz`).
        radius: keypoint hit radius as a fraction of the image side (CUB scores).
    """

    layers: Sequence[int] | None = None
    limit: int | None = None
    correct_only: bool = False
    batch_size: int = 32
    threshold: float = 0.5
    mosaic_images: int = 32
    grids: int | None = None
    score: bool = False
    clusters: bool = False
    radius: float = 0.1


@dataclass(frozen=True)
class HeatmapSummary:
    """What `write_heatmaps` wrote: counts of images, grids, mosaics and PaCa figures, and the best cluster per part
    (empty unless scored)."""

    images: int
    grids: int
    mosaics: int
    paca_figures: int
    best: tuple[PartScore, ...] = ()

    def lines(self, out: Path, options: HeatmapOptions) -> list[str]:
        """What was written under `out`, one line each (what `wegeft-vision visualize` prints)."""
        lines = [f"wrote {self.paca_figures} PaCa cluster figures to {out / 'clusters'}"] if options.clusters else []
        lines.append(f"heatmaps of {self.images} images; wrote {self.grids} heatmap grids to {out / 'images'}")
        if options.mosaic_images > 0:
            lines.append(f"wrote {self.mosaics} cluster mosaics to {out / 'mosaics'}")
        lines += [
            f"{row.part}: best block {row.layer} cluster {row.cluster} {row.metric} {row.score:.3f} "
            f"(permuted maps {row.baseline:.3f}, {row.count} images)"
            for row in self.best
        ]
        if options.score:
            lines.append(f"wrote {out / 'scores.csv'} and {out / 'best_clusters.csv'}")
        return lines


def list_items(
    images: Path | None = None,
    *,
    task: Task | None = None,
    split: str | None = None,
    class_index: int | None = None,
) -> list[Item]:
    """The images to visualize, in a stable order: a folder of image files (unlabelled), or a split of a task
    (`data.tasks.open_task`: a registry task with its data root, or a folder of one's own); filtered by `class_index`.

    Raises:
        FileNotFoundError: a folder or split file that does not exist.
        ValueError: no image (of `class_index`) found.
    """
    if images is not None:
        if not images.is_dir():
            raise FileNotFoundError(f"image folder {images} does not exist")
        paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [Item(p, None, p.stem) for p in paths]
    elif task is not None and split is not None:
        folder = task.image_folder
        samples = task.relative_samples(split)
        items = [Item(folder / rel, label, f"{i:05d}_{Path(rel).stem}") for i, (rel, label) in enumerate(samples)]
    else:
        raise ValueError("list_items needs an image folder, or a task and its split")
    if class_index is not None:
        items = [item for item in items if item.label == class_index]
    if not items:
        where = images or f"{task.ref} ({split}) at {task.root}"
        extra = f" of class {class_index}" if class_index is not None else ""
        raise ValueError(f"no images{extra} found in {where}")
    return items


def cub_parts_for(task: Task | None) -> CubParts | None:
    """The CUB-200-2011 part annotations when the images are fgvc/cub's (scored by keypoints, not masks), else None."""
    if task is None or task.ref != "fgvc/cub":
        return None
    return read_cub_parts(task.root)


def mask_path(image: Path) -> Path:
    """Where the synthetic data keeps an image's mask: `<task>/images/X.png` -> `<task>/masks/X.png`."""
    return image.parent.parent / "masks" / image.name


def _check_masks(items: Sequence[Item]) -> None:
    missing = [item.path for item in items if not mask_path(item.path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"--score needs a per-pixel mask per image: missing {mask_path(missing[0])} for {missing[0]}{more}; "
            "masks are written beside the images by `wegeft-vision data synthetic`"
        )


def _read_masks(items: Sequence[Item], size: int) -> torch.Tensor:
    """(B, size, size) integer masks, resized like the images (nearest neighbour, so labels stay labels)."""
    masks = [torch.from_numpy(np.asarray(Image.open(mask_path(item.path))).astype(np.int64)) for item in items]
    return torch.stack(
        [F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0] for m in masks]
    ).long()


def _keypoint_target(cub: CubParts, items: Sequence[Item], size: int, radius: float) -> KeypointTarget:
    sizes = []
    for item in items:
        with Image.open(item.path) as image:
            sizes.append((image.height, image.width))
    return cub.target([cub.image_id(item.path) for item in items], sizes, (size, size), radius * size)


def write_heatmaps(
    adapter: Path,
    items: Sequence[Item],
    out: Path,
    options: HeatmapOptions | None = None,
    *,
    weights: Path | None = None,
    pretrained: bool = True,
    layout: str | None = None,
    cub: CubParts | None = None,
) -> HeatmapSummary:
    """Load `adapter` onto its backbone and write the heatmaps of `items` under `out`: `images/<item>.png` grids,
    `mosaics/block<i>_cluster<k>.png`, with `options.score` `scores.csv` and `best_clusters.csv`, with
    `options.clusters` `clusters/`.

    Args:
        adapter: adapter `.safetensors` with its JSON sidecar.
        items: the images (see `list_items`).
        out: output folder.
        options: what to draw and score (default: `HeatmapOptions()`).
        weights: local backbone weights file instead of the recorded source.
        pretrained: False builds the backbone with random weights (older sidecars record no weights source).
        layout: the images' task layout (`Task.layout`), which picks the resize of the `paper` preprocessing
            (default VTAB-1k's).
        cub: CUB part annotations to score against (see `cub_parts_for`); otherwise scores use per-pixel masks.

    Raises:
        FileNotFoundError: `options.score` without a mask beside an image (checked before loading the model).
        ValueError: nothing to show (`correct_only` and no image classified correctly) or to score.
    """
    options = options or HeatmapOptions()
    if options.score and cub is None:
        _check_masks(items if options.correct_only or options.limit is None else items[: options.limit])
    model: nn.Module = load_adapted_model(adapter, weights=weights, pretrained=pretrained)
    figures = len(save_paca_clusters(model, out / "clusters")) // 2 if options.clusters else 0  # a .png and an .npz
    config = data_config(model)
    prep = preprocessing("paper", config, layout or VTAB1K)  # resize only: masks stay aligned
    mean, std = prep.mean, prep.std
    dataset = ImageListDataset(
        [(item.path, -1 if item.label is None else item.label) for item in items], prep.pipeline(False)
    )
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=0)

    kept: list[Item] = []
    maps: dict[int, list[torch.Tensor]] = {}
    mosaic_inputs: list[torch.Tensor] = []
    start = 0
    for images, labels in loader:
        batch_items = items[start : start + len(images)]
        start += len(images)
        with torch.no_grad():
            predictions = model(images).argmax(-1)
        keep = torch.ones(len(images), dtype=torch.bool)
        if options.correct_only:
            keep = predictions == labels
        if options.limit is not None:
            keep &= torch.cumsum(keep.long(), 0) <= options.limit - len(kept)
        if not keep.any():
            continue
        images, predictions = images[keep], predictions[keep]
        batch_items = [item for item, k in zip(batch_items, keep.tolist(), strict=True) if k]
        batch_maps = cluster_heatmaps(model, images, layers=options.layers, threshold=None)
        shown = {i: m.masked_fill(m < options.threshold, 0) for i, m in batch_maps.items()}
        grids = len(batch_items) if options.grids is None else max(0, min(len(batch_items), options.grids - len(kept)))
        for b, item in enumerate(batch_items[:grids]):
            label = "" if item.label is None else f"label {item.label}, "
            save_heatmap_grid(
                images[b],
                {i: m[b] for i, m in shown.items()},
                out / "images" / f"{item.name}.png",
                mean=mean,
                std=std,
                title=f"{item.path.name}: {label}predicted {int(predictions[b])}",
            )
        for i, m in batch_maps.items():
            maps.setdefault(i, []).append(m.cpu())
        mosaic_inputs.append(images[: max(0, options.mosaic_images - sum(len(x) for x in mosaic_inputs))])
        kept.extend(batch_items)
        if options.limit is not None and len(kept) >= options.limit:
            break
    if not kept:
        raise ValueError(f"none of the {len(items)} images is classified correctly; nothing to visualize")
    all_maps = {i: torch.cat(m) for i, m in maps.items()}

    mosaics = 0
    if options.mosaic_images > 0:
        inputs = torch.cat(mosaic_inputs)
        for i, m in all_maps.items():
            shown = m[: len(inputs)].masked_fill(m[: len(inputs)] < options.threshold, 0)
            for k in range(m.shape[1]):
                save_cluster_mosaic(inputs, shown[:, k], out / "mosaics" / f"block{i}_cluster{k}.png", mean, std)
        mosaics = sum(m.shape[1] for m in all_maps.values())

    best: list[PartScore] = []
    if options.score:
        if cub is not None:
            target = _keypoint_target(cub, kept, prep.size, options.radius)
        else:
            target = MaskTarget(_read_masks(kept, prep.size), part_names=TARGET_PART, threshold=options.threshold)
        scores = localization_scores(all_maps, target)
        if not scores:
            raise ValueError(f"no image among the {len(kept)} shown has an annotated part or target object to score")
        write_csv(scores, out / "scores.csv")
        best = best_clusters(all_maps, target)
        write_csv(best, out / "best_clusters.csv")
    grids = len(kept) if options.grids is None else min(len(kept), options.grids)
    return HeatmapSummary(images=len(kept), grids=grids, mosaics=mosaics, paca_figures=figures, best=tuple(best))
