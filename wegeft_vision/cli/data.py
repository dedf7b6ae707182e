"""Benchmark data: list the registry, fetch the FGVC split files, check datasets on disk, write synthetic data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SYNTHETIC_TASKS = ("shape", "colour", "position", "count")  # `data.synthetic.TASKS`, without importing the data package


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    sub.add_parser("list", help="the registered VTAB-1k tasks and FGVC datasets with classes and split sizes")

    fetch = sub.add_parser("fetch-splits", help="download and verify the split files of an FGVC dataset")
    fetch.add_argument("target", help="fgvc/<dataset>, e.g. fgvc/cub")
    fetch.add_argument("--dest", type=Path, required=True, help="folder; files land in DEST/<dataset>/<split>.json")
    fetch.add_argument("--manifest", type=Path, help="manifest file to use instead of the bundled one")
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds per request")

    chk = sub.add_parser(
        "check",
        help="verify a dataset on disk: layout, counts, checksums, split files, images, labels",
        description="Exit 0 when the data passes (warnings, e.g. what loading changes about an image, are listed), "
        "1 when the check finds problems, 2 when it cannot run. Images over PIL's pixel limit are refused; if you "
        "trust them, raise it with WEGEFT_MAX_IMAGE_PIXELS=<pixels> (0: no limit).",
    )
    chk.add_argument(
        "target",
        help="vtab-1k/<task>, fgvc/<dataset> (aliases accepted), or a folder of your own (VTAB-1k or "
        "ImageFolder layout; its manifest.yaml is written on first use)",
    )
    chk.add_argument("--root", type=Path, help="VTAB-1k: folder of task folders; FGVC: dataset root (not for a folder)")
    chk.add_argument("--splits", type=Path, help="FGVC: folder of the JSON split files (default: --root)")
    chk.add_argument("--manifest", type=Path, help="manifest file (required for a custom task or dataset)")
    chk.add_argument("--allow-count-mismatch", action="store_true", help="accept counts that differ from the manifest")
    chk.add_argument(
        "--update-manifest",
        action="store_true",
        help="a folder of your own: describe it as it is now in its manifest.yaml (after a change made on purpose, or "
        "in a copy), then check it",
    )
    chk.add_argument("--no-images", action="store_true", help="skip decoding the images (layout and labels only)")
    chk.add_argument("--workers", type=int, help="decoding threads (default: min(8, CPUs))")
    chk.add_argument("--max-problems", type=int, default=20, help="problems and warnings listed per split; 0: all")

    syn = sub.add_parser("synthetic", help="write the synthetic shapes data in the VTAB-1k layout")
    syn.add_argument("--out", type=Path, required=True, help="VTAB-1k root to write synthetic_<task>/ into")
    syn.add_argument("--task", action="append", choices=SYNTHETIC_TASKS, help="label task (repeatable)")
    syn.add_argument("--size", type=int, default=64, help="image side in pixels")
    syn.add_argument("--train", type=int, default=800, help="scenes in train800")
    syn.add_argument("--val", type=int, default=200, help="scenes in val200")
    syn.add_argument("--test", type=int, default=500, help="scenes in test")
    syn.add_argument("--seed", type=int, default=0, help="stream seed")


def _list() -> int:
    from ..data.registry import FGVC_DATASETS, VTAB_TASKS

    print(f"{'vtab-1k task':<22} {'group':<12} {'classes':>7} {'test':>7}  aliases")
    for t in VTAB_TASKS.values():
        print(f"{t.name:<22} {t.group:<12} {t.num_classes:>7} {t.test_size:>7,}  {', '.join(t.aliases)}")
    print(f"\n{'fgvc dataset':<16} {'classes':>7} {'train':>7} {'val':>6} {'test':>7}  image folder")
    for d in FGVC_DATASETS.values():
        s = d.split_sizes
        folder = d.image_folder or "(root)"
        print(f"{d.name:<16} {d.num_classes:>7} {s['train']:>7,} {s['val']:>6,} {s['test']:>7,}  {folder}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..data import check, parse_target
    from ..data.folders import is_folder_ref

    if not is_folder_ref(args.target):
        parse_target(args.target, strict=args.manifest is None)
        if args.update_manifest:
            raise ValueError(f"--update-manifest describes a folder of your own; {args.target} is a benchmark's task")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers should be at least 1, got {args.workers}")
    if args.update_manifest:
        from ..data.folders import MANIFEST_FILE, update_manifest

        manifest = update_manifest(args.target)
        counts = ", ".join(f"{name} {entry.count:,}" for name, entry in manifest.splits.items())
        print(f"wrote {Path(args.target) / MANIFEST_FILE}: {manifest.num_classes} classes; {counts}")
    report = check(
        args.target,
        args.root,
        splits_dir=args.splits,
        manifest=args.manifest,
        allow_count_mismatch=args.allow_count_mismatch,
        verify_images=not args.no_images,
        workers=args.workers,
    )
    print(report.format(args.max_problems))
    if report.ok:
        return 0
    errors = report.errors
    kinds = ", ".join(sorted({p.kind for p in errors}))
    first = " ".join(errors[0].message.split())
    summary = f"{report.target}: {len(errors)} problem(s): {kinds}; first: {first}"
    print(f"wegeft-vision data check: {summary}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        return _list()
    if args.data_command == "fetch-splits":
        from ..data import fetch_fgvc_splits, parse_target
        from ..data.registry import FGVC

        benchmark, name = parse_target(args.target, strict=args.manifest is None)
        if benchmark != FGVC:
            raise ValueError(f"fetch-splits handles fgvc/<dataset>; {args.target} ships no split files to fetch")
        for path in fetch_fgvc_splits(name, args.dest, manifest=args.manifest, timeout=args.timeout):
            print(f"ok {path}")
        return 0
    if args.data_command == "check":
        return _check(args)
    from ..data import synthetic

    counts = {"train800": args.train, "val200": args.val, "test": args.test}
    for task in args.task or ["shape"]:
        folder = synthetic.write_synthetic(args.out, task, counts, size=args.size, seed=args.seed)
        print(
            f"wrote {folder} (check with: wegeft-vision data check vtab-1k/{folder.name} --root {args.out} "
            f"--manifest {folder / 'manifest.yaml'})"
        )
    return 0
