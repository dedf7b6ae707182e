"""Trainable parameters of every named method variant (`methods.catalogue`) on a timm architecture or a backbone family
(`backbones.families`), at its real size, built on the meta device (no weights, no memory)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm architecture, or a backbone family (vit, deit-distilled, dinov2-reg, clip, siglip, eva02, "
        "eva02-unfused, beit, swin: its architecture)",
    )
    parser.add_argument(
        "--device",
        choices=("meta", "cpu"),
        default="meta",
        help="meta: no weights (default); cpu: random weights, for methods that read them while they build",
    )
    parser.add_argument("--num-classes", type=int, default=100, help="head size (not counted)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..backbones import create_backbone
    from ..backbones.families import BY_NAME
    from ..methods import parameter_table

    model = BY_NAME[args.model].architecture if args.model in BY_NAME else args.model
    with torch.device(args.device):
        backbone = create_backbone(model, num_classes=args.num_classes, pretrained=False)
    rows = parameter_table(backbone)
    family = f" (family {args.model})" if model != args.model else ""
    weights = "meta device, no weights" if args.device == "meta" else "random weights"
    print(f"Trainable parameters on {model}{family} (head excluded, {weights})")
    width = max(len(row["method"]) for row in rows)
    print(f"{'method':<{width}} {'params':>12} {'(M)':>9} {'% backbone':>11}")
    for row in rows:
        if row["trainable"] is None:  # the variant does not fit this architecture: the row says why
            print(f"{row['method']:<{width}} n/a: {' '.join(row['error'].split())}")
            continue
        print(
            f"{row['method']:<{width}} {row['trainable']:>12,} {row['millions']:>8.3f}M "
            f"{row['percent_of_backbone']:>10.3f}%"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": model, "rows": rows}, indent=2) + "\n")
    return 0
