"""`wegeft-vision import-checkpoint` turns an adapter released with the WeGeFT authors' code (`last.pth.tar`) into
this toolkit's adapter: safetensors with its JSON sidecar (backbone tag, rank, targets, classes, training arguments)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="FILE", help="the authors' checkpoint (last.pth.tar)")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="ADAPTER.safetensors", help="adapter to write (sidecar beside it)"
    )


def run(args: argparse.Namespace) -> int:
    from ..methods.authors_checkpoint import import_authors_checkpoint

    path, checkpoint = import_authors_checkpoint(args.checkpoint, args.out)
    config = checkpoint.config()
    metric = "none recorded" if checkpoint.metric is None else f"{checkpoint.metric:.2f}"
    print(
        f"{checkpoint.path.name} (sha256 {checkpoint.sha256[:12]}): WeGeFT r={config.rank} on "
        f"{', '.join(config.targets)} of {checkpoint.backbone}, {checkpoint.num_classes} classes; "
        f"top-1 the checkpoint records: {metric}"
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
