"""Trainable parameters of every named method variant (`methods.catalogue`) on a timm architecture, random weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--num-classes", type=int, default=100, help="head size (not counted)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")


def run(args: argparse.Namespace) -> int:
    from ..backbones import create_backbone
    from ..methods import parameter_table

    rows = parameter_table(create_backbone(args.model, num_classes=args.num_classes, pretrained=False))
    print(f"Trainable parameters on {args.model} (head excluded, random weights)")
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
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0
