"""WeGeFT cluster heatmaps of a saved adapter: per-image grids, per-(block, cluster) mosaics and, with `--score`,
localization scores (IoU) against per-pixel masks such as the synthetic data's, and with `--clusters`, for a PaCa
adapter, which weight rows each learned cluster gathers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from ..backbones import data_config
from ..data import ImageListDataset, load_fgvc_splits, load_vtab1k_split, preprocessing, read_manifest
from ..data.fgvc import image_dir
from ..data.folders import folder_split, is_folder_ref
from ..data.registry import FGVC, VTAB1K, fgvc_dataset
from ..methods import load_adapted_model
from ..viz import (
    CubParts,
    KeypointTarget,
    MaskTarget,
    best_clusters,
    cluster_heatmaps,
    localization_scores,
    read_cub_parts,
    save_cluster_mosaic,
    save_heatmap_grid,
    save_paca_clusters,
    write_csv,
)

HELP = "write WeGeFT token-clustering heatmaps (and localization scores) of a saved adapter"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
TARGET_PART = {1: "target"}  # synthetic masks: 1 is the labelled (largest) object, 2.. the distractors


@dataclass(frozen=True)
class Item:
    """One image to visualize: its file, its label (None in a bare folder) and the stem of its output files."""

    path: Path
    label: int | None
    name: str


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", type=Path, required=True, help="adapter .safetensors (with its JSON sidecar)")
    parser.add_argument("--weights", type=Path, help="local backbone weights file instead of the pretrained tag's")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random backbone weights, for an adapter whose sidecar records no weights source (older files)",
    )
    source = parser.add_argument_group(
        "images (give --images, or --data-root with --benchmark, --task, --split, or a task folder as --task with "
        "--split)"
    )
    source.add_argument("--images", type=Path, help="folder of image files (unlabelled)")
    source.add_argument("--data-root", type=Path, help="VTAB-1k root (folder of task folders) or FGVC dataset root")
    source.add_argument("--benchmark", choices=[VTAB1K, FGVC], help="layout of --data-root")
    source.add_argument("--task", help="VTAB-1k task or FGVC dataset name, or a task folder of your own (./path)")
    source.add_argument("--split", help="split to read, e.g. test (VTAB-1k) or val (FGVC)")
    source.add_argument("--splits", type=Path, help="FGVC: folder of the JSON split files (default: --data-root)")
    source.add_argument("--manifest", type=Path, help="FGVC: manifest of a custom dataset (for its image folder)")
    parser.add_argument("--class", dest="class_index", type=int, help="only images whose label is this class index")
    parser.add_argument("--correct-only", action="store_true", help="only images the model classifies correctly")
    parser.add_argument("--layers", type=int, nargs="+", help="block indices (default: every block with WeGeFT)")
    parser.add_argument("--limit", type=int, help="at most this many images")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--threshold", type=float, default=0.5, help="normalized map values below it are zeroed")
    parser.add_argument("--mosaic-images", type=int, default=32, help="images per (block, cluster) mosaic")
    parser.add_argument("--grids", type=int, help="per-image grids for the first N images only (default: every image)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--score",
        action="store_true",
        help="also write localization scores (CSV): IoU against the images' masks, or for fgvc/cub the hit rate of "
        "each map's maximum within --radius of the CUB-200-2011 part locations (parts/part_locs.txt)",
    )
    parser.add_argument(
        "--clusters",
        action="store_true",
        help="also draw, for a PaCa adapter (generator paca or paca_attn), which weight rows (output channels) each "
        "learned cluster gathers, per layer: OUT/clusters/<layer>.png and .npz",
    )
    parser.add_argument(
        "--radius", type=float, default=0.1, help="keypoint hit radius, as a fraction of the image side (CUB)"
    )


def _check_args(args: argparse.Namespace) -> None:
    dataset_args = {"--benchmark": args.benchmark, "--task": args.task, "--split": args.split}
    if args.task is not None and is_folder_ref(args.task):
        if args.images is not None or args.data_root is not None or args.split is None:
            raise ValueError(f"--task {args.task} is a task folder: give --split, and neither --images nor --data-root")
    elif (args.images is None) == (args.data_root is None):
        raise ValueError("give either --images DIR or --data-root DIR with --benchmark, --task and --split")
    elif args.data_root is not None:
        missing = [name for name, value in dataset_args.items() if value is None]
        if missing:
            raise ValueError(f"--data-root needs {', '.join(missing)}")
    elif args.class_index is not None or args.correct_only:
        raise ValueError("--class and --correct-only need labels: use --data-root instead of --images")
    for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} should be at least 1, got {value}")
    for name, value in (("--mosaic-images", args.mosaic_images), ("--grids", args.grids)):
        if value is not None and value < 0:
            raise ValueError(f"{name} should be at least 0, got {value}")
    if not 0.0 <= args.threshold <= 1.0 or (args.score and args.threshold == 0.0):
        raise ValueError(f"--threshold should be in {'(0, 1]' if args.score else '[0, 1]'}, got {args.threshold}")
    if not args.adapter.is_file():
        raise FileNotFoundError(f"adapter file {args.adapter} does not exist")


def list_items(args: argparse.Namespace) -> list[Item]:
    """The images named by the arguments, filtered by `--class`, in a stable order."""
    if args.images is not None:
        if not args.images.is_dir():
            raise FileNotFoundError(f"image folder {args.images} does not exist")
        paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [Item(p, None, p.stem) for p in paths]
    elif args.task is not None and is_folder_ref(args.task):
        folder = Path(args.task).expanduser()
        samples = folder_split(folder, args.split)
        items = [Item(folder / rel, label, f"{i:05d}_{Path(rel).stem}") for i, (rel, label) in enumerate(samples)]
    elif args.benchmark == VTAB1K:
        samples, folder = load_vtab1k_split(args.data_root, args.task, args.split)
        items = [Item(folder / rel, label, f"{i:05d}_{Path(rel).stem}") for i, (rel, label) in enumerate(samples)]
    else:
        splits = load_fgvc_splits(args.task, args.splits or args.data_root, splits=(args.split,))
        folder = read_manifest(args.manifest).image_folder if args.manifest else None
        root = image_dir(args.data_root, splits.dataset, folder)
        items = [
            Item(root / rel, label, f"{i:05d}_{Path(rel).stem}") for i, (rel, label) in enumerate(splits[args.split])
        ]
    if args.class_index is not None:
        items = [item for item in items if item.label == args.class_index]
    if not items:
        where = args.images or f"{args.data_root} ({args.task}, {args.split})"
        extra = f" of class {args.class_index}" if args.class_index is not None else ""
        raise ValueError(f"no images{extra} found in {where}")
    return items


def mask_path(image: Path) -> Path:
    """Where the synthetic data keeps an image's mask: `<task>/images/X.png` -> `<task>/masks/X.png`."""
    return image.parent.parent / "masks" / image.name


def _check_masks(items: list[Item]) -> None:
    missing = [item.path for item in items if not mask_path(item.path).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"--score needs a per-pixel mask per image: missing {mask_path(missing[0])} for {missing[0]}{more}; "
            "masks are written beside the images by `wegeft-vision data synthetic`"
        )


def _read_masks(items: list[Item], size: int) -> torch.Tensor:
    """(B, size, size) integer masks, resized like the images (nearest neighbour, so labels stay labels)."""
    masks = [torch.from_numpy(np.asarray(Image.open(mask_path(item.path))).astype(np.int64)) for item in items]
    return torch.stack(
        [F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0] for m in masks]
    ).long()


def _cub_parts(args: argparse.Namespace) -> CubParts | None:
    """The CUB part annotations when scoring fgvc/cub (keypoints instead of masks), else None."""
    if not args.score or args.benchmark != FGVC or fgvc_dataset(args.task).name != "cub":
        return None
    return read_cub_parts(args.data_root)


def _keypoint_target(cub: CubParts, items: list[Item], size: int, radius: float) -> KeypointTarget:
    sizes = []
    for item in items:
        with Image.open(item.path) as image:
            sizes.append((image.height, image.width))
    return cub.target([cub.image_id(item.path) for item in items], sizes, (size, size), radius * size)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if not 0 < args.radius <= 1:
        raise ValueError(f"--radius must be a fraction of the image side in (0, 1], got {args.radius}")
    items = list_items(args)
    cub = _cub_parts(args)
    if args.score and cub is None:
        _check_masks(items if args.correct_only or args.limit is None else items[: args.limit])
    model: nn.Module = load_adapted_model(args.adapter, weights=args.weights, pretrained=not args.random_weights)
    if args.clusters:
        written = save_paca_clusters(model, args.out / "clusters")
        print(f"wrote {len(written) // 2} PaCa cluster figures to {args.out / 'clusters'}")
    config = data_config(model)
    prep = preprocessing("paper", config, benchmark=args.benchmark or VTAB1K)  # resize only: masks stay aligned
    mean, std = prep.mean, prep.std
    dataset = ImageListDataset(
        [(item.path, -1 if item.label is None else item.label) for item in items], prep.pipeline(False)
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)

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
        if args.correct_only:
            keep = predictions == labels
        if args.limit is not None:
            keep &= torch.cumsum(keep.long(), 0) <= args.limit - len(kept)
        if not keep.any():
            continue
        images, predictions = images[keep], predictions[keep]
        batch_items = [item for item, k in zip(batch_items, keep.tolist(), strict=True) if k]
        batch_maps = cluster_heatmaps(model, images, layers=args.layers, threshold=None)
        shown = {i: m.masked_fill(m < args.threshold, 0) for i, m in batch_maps.items()}
        grids = len(batch_items) if args.grids is None else max(0, min(len(batch_items), args.grids - len(kept)))
        for b, item in enumerate(batch_items[:grids]):
            label = "" if item.label is None else f"label {item.label}, "
            save_heatmap_grid(
                images[b],
                {i: m[b] for i, m in shown.items()},
                args.out / "images" / f"{item.name}.png",
                mean=mean,
                std=std,
                title=f"{item.path.name}: {label}predicted {int(predictions[b])}",
            )
        for i, m in batch_maps.items():
            maps.setdefault(i, []).append(m.cpu())
        mosaic_inputs.append(images[: max(0, args.mosaic_images - sum(len(x) for x in mosaic_inputs))])
        kept.extend(batch_items)
        if args.limit is not None and len(kept) >= args.limit:
            break
    if not kept:
        raise ValueError(f"none of the {len(items)} images is classified correctly; nothing to visualize")
    all_maps = {i: torch.cat(m) for i, m in maps.items()}
    grids = len(kept) if args.grids is None else min(len(kept), args.grids)
    print(f"heatmaps of {len(kept)} images; wrote {grids} heatmap grids to {args.out / 'images'}")

    if args.mosaic_images > 0:
        inputs = torch.cat(mosaic_inputs)
        for i, m in all_maps.items():
            shown = m[: len(inputs)].masked_fill(m[: len(inputs)] < args.threshold, 0)
            for k in range(m.shape[1]):
                save_cluster_mosaic(inputs, shown[:, k], args.out / "mosaics" / f"block{i}_cluster{k}.png", mean, std)
        print(f"wrote {sum(m.shape[1] for m in all_maps.values())} cluster mosaics to {args.out / 'mosaics'}")

    if args.score:
        if cub is not None:
            target = _keypoint_target(cub, kept, prep.size, args.radius)
        else:
            target = MaskTarget(_read_masks(kept, prep.size), part_names=TARGET_PART, threshold=args.threshold)
        scores = localization_scores(all_maps, target)
        if not scores:
            raise ValueError(f"no image among the {len(kept)} shown has an annotated part or target object to score")
        write_csv(scores, args.out / "scores.csv")
        best = best_clusters(all_maps, target)
        write_csv(best, args.out / "best_clusters.csv")
        for row in best:
            print(
                f"{row.part}: best block {row.layer} cluster {row.cluster} {row.metric} {row.score:.3f} "
                f"(permuted maps {row.baseline:.3f}, {row.count} images)"
            )
        print(f"wrote {args.out / 'scores.csv'} and {args.out / 'best_clusters.csv'}")
    return 0
