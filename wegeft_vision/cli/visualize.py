"""WeGeFT cluster heatmaps of a saved adapter: per-image grids, per-(block, cluster) mosaics and, with `--score`,
localization scores (IoU) against per-pixel masks such as the synthetic data's, and with `--clusters`, for a PaCa
adapter, which weight rows each learned cluster gathers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

BENCHMARKS = ("vtab-1k", "fgvc")  # the layouts a --data-root may have (`data.registry`'s VTAB1K and FGVC)


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
    source.add_argument("--benchmark", choices=BENCHMARKS, help="layout of --data-root")
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
        help="also draw, for a PaCa adapter (g_theta paca or paca_attn), which weight rows (output channels) each "
        "learned cluster gathers, per layer: OUT/clusters/<layer>.png and .npz",
    )
    parser.add_argument(
        "--radius", type=float, default=0.1, help="keypoint hit radius, as a fraction of the image side (CUB)"
    )


def _check_args(args: argparse.Namespace) -> None:
    from ..data.folders import is_folder_ref

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
    if not 0 < args.radius <= 1:
        raise ValueError(f"--radius must be a fraction of the image side in (0, 1], got {args.radius}")
    if not args.adapter.is_file():
        raise FileNotFoundError(f"adapter file {args.adapter} does not exist")


def run(args: argparse.Namespace) -> int:
    from ..data.folders import is_folder_ref
    from ..data.tasks import open_task
    from ..viz.pipeline import HeatmapOptions, cub_parts_for, list_items, write_heatmaps

    _check_args(args)
    task = None
    if args.images is None:
        ref = args.task if is_folder_ref(args.task) else f"{args.benchmark}/{args.task}"
        task = open_task(ref, args.data_root, args.splits, args.manifest)
    items = list_items(args.images, task=task, split=args.split, class_index=args.class_index)
    options = HeatmapOptions(
        layers=args.layers,
        limit=args.limit,
        correct_only=args.correct_only,
        batch_size=args.batch_size,
        threshold=args.threshold,
        mosaic_images=args.mosaic_images,
        grids=args.grids,
        score=args.score,
        clusters=args.clusters,
        radius=args.radius,
    )
    cub = cub_parts_for(task) if args.score else None
    out = args.out
    summary = write_heatmaps(
        args.adapter,
        items,
        out,
        options,
        weights=args.weights,
        pretrained=not args.random_weights,
        layout=task.layout if task is not None else None,
        cub=cub,
    )
    print("\n".join(summary.lines(out, options)))
    return 0
