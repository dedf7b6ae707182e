"""How well cluster heatmaps localize parts: IoU with per-pixel masks, keypoint hit rates (CUB-200-2011 part files),
and per part the best (block, cluster) against the same statistic for randomly permuted maps.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import torch

from .heatmaps import upsample_maps

Baseline = Literal["pixels", "images"]


@dataclasses.dataclass(frozen=True)
class ClusterScore:
    """One (block, cluster, part) statistic averaged over the `count` images where the part is present/visible."""

    metric: str
    layer: int
    cluster: int
    part: str
    score: float
    count: int


@dataclasses.dataclass(frozen=True)
class PartScore:
    """The best (block, cluster) for a part, and the best score reached by randomly permuted maps."""

    metric: str
    part: str
    layer: int
    cluster: int
    score: float
    baseline: float
    count: int


class LocalizationTarget(Protocol):
    """What maps are scored against: the parts' names and a (K, P) statistic of (B, K, gh, gw) maps."""

    metric: ClassVar[str]

    def part_labels(self) -> list[str]: ...

    def score(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclasses.dataclass(frozen=True)
class MaskTarget:
    """Per-pixel part masks; a map covers a part by the IoU of {upsampled map >= threshold} with the part's pixels.

    Args:
        masks: (B, H, W) bool (one part) or integer labels (0 background, each positive value one part).
        part_names: {label: name}; its labels are the parts scored. None scores every positive label present, named
            "foreground" for a bool mask and "part <label>" otherwise.
        threshold: level in (0, 1] at which a normalized map, bilinearly upsampled to (H, W), is binarized. Give
            normalized maps (`threshold=None` in `cluster_heatmaps`) or maps thresholded at the same level.
    """

    masks: torch.Tensor
    part_names: Mapping[int, str] | None = None
    threshold: float = 0.5
    metric: ClassVar[str] = "iou"

    def __post_init__(self) -> None:
        if self.masks.dim() != 3 or self.masks.is_floating_point():
            raise ValueError(
                f"masks must be a bool or integer (B, H, W) tensor, got {self.masks.dtype} {tuple(self.masks.shape)}"
            )
        if isinstance(self.threshold, bool) or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")

    def _labels(self) -> list[int]:
        if self.part_names is not None:
            return sorted(int(k) for k in self.part_names)
        if self.masks.dtype == torch.bool:
            return [1]
        return [int(v) for v in torch.unique(self.masks) if v > 0]

    def part_labels(self) -> list[str]:
        if self.part_names is not None:
            return [str(self.part_names[k]) for k in self._labels()]
        return ["foreground"] if self.masks.dtype == torch.bool else [f"part {v}" for v in self._labels()]

    def score(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean IoU (K, P) over the images where each part is present, and that number of images (P,)."""
        _check_batch(maps, len(self.masks))
        masks = self.masks.to("cpu").long()
        labels = self._labels()
        totals = torch.zeros(maps.shape[1], len(labels), dtype=torch.float64)
        counts = torch.zeros(len(labels), dtype=torch.long)
        for b in range(len(masks)):
            covered = upsample_maps(maps[b], masks.shape[1:]) >= self.threshold  # (K, H, W)
            for p, label in enumerate(labels):
                part = masks[b] == label  # (H, W)
                if not part.any():
                    continue
                inter = (covered & part).sum((1, 2))
                union = (covered | part).sum((1, 2))
                totals[:, p] += inter.double() / union.double()
                counts[p] += 1
        return totals / counts, counts  # NaN where a part never occurs


@dataclasses.dataclass(frozen=True)
class KeypointTarget:
    """Part keypoints; a map hits a part when its maximum lies within `radius` pixels of it.

    The maximum of a map bilinearly upsampled to `image_size` is at the center of its largest grid cell, which is
    where it is taken. A constant (e.g. all-zero) map counts its first cell.

    Args:
        points: (B, P, 2) part locations as (x, y) pixels in the frame of the model input (see `rescale_points`).
        visible: (B, P) bool; invisible parts are not counted.
        image_size: (H, W) of the model input.
        radius: hit distance in pixels.
        part_names: P names; None gives "part <i>".
    """

    points: torch.Tensor
    visible: torch.Tensor
    image_size: tuple[int, int]
    radius: float
    part_names: Sequence[str] | None = None
    metric: ClassVar[str] = "hit_rate"

    def __post_init__(self) -> None:
        if self.points.dim() != 3 or self.points.shape[2] != 2:
            raise ValueError(f"points must have shape (B, P, 2), got {tuple(self.points.shape)}")
        if tuple(self.visible.shape) != tuple(self.points.shape[:2]):
            raise ValueError(f"visible must have shape {tuple(self.points.shape[:2])}, got {tuple(self.visible.shape)}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sides, got {self.image_size!r}")
        if not self.radius > 0:
            raise ValueError(f"radius must be a positive number of pixels, got {self.radius!r}")
        if self.part_names is not None and len(self.part_names) != self.points.shape[1]:
            raise ValueError(f"part_names has {len(self.part_names)} names for {self.points.shape[1]} parts")

    def part_labels(self) -> list[str]:
        return (
            list(self.part_names) if self.part_names is not None else [f"part {i}" for i in range(self.points.shape[1])]
        )

    def score(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hit rate (K, P) over the images where each part is visible, and that number of images (P,)."""
        _check_batch(maps, len(self.points))
        gh, gw = maps.shape[-2:]
        height, width = self.image_size
        peak = maps.flatten(2).argmax(-1)  # (B, K)
        centers = torch.stack([(peak % gw + 0.5) * width / gw, (peak // gw + 0.5) * height / gh], -1)  # (B, K, 2)
        points = self.points.to("cpu", torch.float64)
        distance = torch.linalg.vector_norm(centers.double().unsqueeze(2) - points.unsqueeze(1), dim=-1)  # (B, K, P)
        visible = self.visible.to("cpu", torch.bool).unsqueeze(1)  # (B, 1, P)
        hits = ((distance <= self.radius) & visible).sum(0).double()  # (K, P)
        counts = visible.squeeze(1).sum(0)
        return hits / counts, counts  # NaN where a part is never visible


def _check_batch(maps: torch.Tensor, batch: int) -> None:
    if maps.dim() != 4 or maps.shape[0] != batch:
        raise ValueError(f"maps must have shape ({batch}, K, gh, gw) to match the target, got {tuple(maps.shape)}")


def _stack(maps: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """All blocks' maps as one (B, K, gh, gw) CPU tensor, and the (block, cluster) of each of the K. Blocks on coarser
    grids (a Swin's later stages) are upsampled to the finest grid among them."""
    if not maps:
        raise ValueError("maps is empty: give {block index: (B, r, gh, gw)} as returned by cluster_heatmaps")
    shapes = {i: tuple(m.shape) for i, m in maps.items()}
    if any(len(s) != 4 for s in shapes.values()) or len({s[0] for s in shapes.values()}) != 1:
        raise ValueError(f"every block's maps must be (B, r, gh, gw) with the same B, got {shapes}")
    layers = sorted(maps)
    finest = max((s[2:] for s in shapes.values()), key=lambda grid: grid[0] * grid[1])
    on_grid = [maps[i].detach().to("cpu", torch.float32) for i in layers]
    stacked = torch.cat([m if m.shape[2:] == finest else upsample_maps(m, finest) for m in on_grid], dim=1)
    return stacked, [(i, k) for i in layers for k in range(maps[i].shape[1])]


def localization_scores(maps: Mapping[int, torch.Tensor], target: LocalizationTarget) -> list[ClusterScore]:
    """The target's statistic for every (block, cluster, part), parts with no occurrence left out.

    Args:
        maps: {block index: (B, r, gh, gw)}, e.g. from `cluster_heatmaps`.
        target: a `MaskTarget` or `KeypointTarget` for the same B images.
    """
    stacked, index = _stack(maps)
    table, counts = target.score(stacked)
    rows = []
    for p, part in enumerate(target.part_labels()):
        if counts[p] == 0:
            continue
        for k, (layer, cluster) in enumerate(index):
            rows.append(ClusterScore(target.metric, layer, cluster, part, float(table[k, p]), int(counts[p])))
    return rows


def permute_maps(maps: torch.Tensor, baseline: Baseline, generator: torch.Generator) -> torch.Tensor:
    """Maps with their structure destroyed, for a chance-level baseline.

    Args:
        maps: (B, K, gh, gw).
        baseline: "pixels" shuffles the cells of each map independently; "images" gives every image the maps of
            another image (a random cyclic order), keeping any image-independent spatial prior such as a center bias.
        generator: the seeded source of randomness.
    """
    if baseline == "pixels":
        flat = maps.flatten(2)
        order = torch.argsort(torch.rand(flat.shape, generator=generator), dim=-1)
        return flat.gather(-1, order).view_as(maps)
    if baseline == "images":
        if len(maps) < 2:
            raise ValueError("baseline='images' needs at least 2 images to exchange their maps")
        order = torch.randperm(len(maps), generator=generator)
        source = torch.empty_like(order)
        source[order] = order.roll(-1)
        return maps[source]
    raise ValueError(f"baseline must be 'pixels' or 'images', got {baseline!r}")


def best_clusters(
    maps: Mapping[int, torch.Tensor],
    target: LocalizationTarget,
    baseline: Baseline = "pixels",
    permutations: int = 10,
    seed: int = 0,
) -> list[PartScore]:
    """Per part, the (block, cluster) with the highest score, and the mean over `permutations` draws of the highest
    score reached by permuted maps: selecting the best of many clusters is also done for the baseline.

    Args:
        maps: {block index: (B, r, gh, gw)}, e.g. from `cluster_heatmaps`.
        target: a `MaskTarget` or `KeypointTarget` for the same B images.
        baseline: how maps are permuted, see `permute_maps`.
        permutations: number of permutation draws averaged.
        seed: seed of the permutations.
    """
    if not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    stacked, index = _stack(maps)
    table, counts = target.score(stacked)
    generator = torch.Generator().manual_seed(seed)
    chance = torch.stack(
        [target.score(permute_maps(stacked, baseline, generator))[0].amax(0) for _ in range(permutations)]
    ).mean(0)  # (P,)
    rows = []
    for p, part in enumerate(target.part_labels()):
        if counts[p] == 0:
            continue
        k = int(table[:, p].argmax())
        layer, cluster = index[k]
        rows.append(
            PartScore(target.metric, part, layer, cluster, float(table[k, p]), float(chance[p]), int(counts[p]))
        )
    return rows


def write_csv(rows: Sequence[ClusterScore | PartScore], path: str | Path) -> Path:
    """Write score rows (dataclasses of one type) as a CSV file with a header; parent folders are created."""
    if not rows:
        raise ValueError(f"no score rows to write to {path}")
    fields = [f.name for f in dataclasses.fields(rows[0])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)
    return path


def rescale_points(
    points: torch.Tensor, original_sizes: torch.Tensor | Sequence[Sequence[int]], size: Sequence[int]
) -> torch.Tensor:
    """Map (B, P, 2) (x, y) pixel locations from each image's original (H, W) to a plain resize to `size` (H, W).

    Crops are not modeled: use a resize-only transform for the images whose keypoints are scored.
    """
    original = torch.as_tensor(original_sizes, dtype=torch.float64).reshape(-1, 2)  # (B, [H, W])
    if len(original) != len(points):
        raise ValueError(f"original_sizes has {len(original)} sizes for {len(points)} images")
    factor = torch.tensor([size[1], size[0]], dtype=torch.float64) / original.flip(-1)  # (B, [sx, sy])
    return points.to(torch.float64) * factor.unsqueeze(1)
