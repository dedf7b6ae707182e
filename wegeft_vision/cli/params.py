"""Trainable parameters of every method (default configs) on a timm architecture built with random weights."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from ..backbones import create_backbone
from ..methods import (
    BitFitConfig,
    FacTTKConfig,
    FacTTTConfig,
    FullFinetuneConfig,
    GenFTConfig,
    LinearProbeConfig,
    LoRAConfig,
    MethodConfig,
    SharedLoRAConfig,
    VPTConfig,
    WeGeFTConfig,
    count_trainable,
    inject,
)
from ..methods.hf_peft import default_configs as peft_rows

HELP = "print the trainable parameters (excluding the head) of each method"

ROWS: list[tuple[str, MethodConfig]] = [
    ("WeGeFT", WeGeFTConfig()),
    ("WeGeFT (d_out)", WeGeFTConfig(variant="d_out")),
    ("WeGeFT-Sep", WeGeFTConfig(shared=False)),
    # g_theta ablations (the paper's Table 8) and GIFT v1's parameter-to-cluster attention (PaCa)
    ("WeGeFT-sigmoid", WeGeFTConfig(generator="sigmoid")),
    ("WeGeFT-ReLU", WeGeFTConfig(generator="relu")),
    ("WeGeFT-GELU", WeGeFTConfig(generator="gelu")),
    ("WeGeFT-MLP", WeGeFTConfig(generator="mlp")),
    ("WeGeFT-MLP (one per layer)", WeGeFTConfig(generator="mlp", generator_per_layer=True)),
    ("WeGeFT-Transformer", WeGeFTConfig(generator="transformer")),
    ("WeGeFT-MLP-Mixer", WeGeFTConfig(generator="mixer")),
    ("GIFT-PaCa", WeGeFTConfig(generator="paca")),
    ("GIFT-PaCa-attn", WeGeFTConfig(generator="paca_attn")),
    ("LoRA", LoRAConfig()),
    # compared under the same recipe: the weight-unaware control (Table 9), GenFT, FacT
    ("Shared LoRA", SharedLoRAConfig()),
    ("GenFT (q, v)", GenFTConfig()),
    ("GenFT (proj)", GenFTConfig(targets=("attn.proj",))),
    ("FacT-TT", FacTTTConfig()),
    ("FacT-TK", FacTTKConfig()),
    ("VPT-deep", VPTConfig()),
    ("BitFit", BitFitConfig()),
    ("Linear probe", LinearProbeConfig()),
    ("Full fine-tuning", FullFinetuneConfig()),
]


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--num-classes", type=int, default=100, help="head size (not counted)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")


def parameter_table(model_name: str, num_classes: int = 100) -> list[dict]:
    """One row per method: name, config, trainable parameters without the head, and share of the backbone."""
    base = create_backbone(model_name, num_classes=num_classes, pretrained=False)
    backbone_params = count_trainable(inject(copy.deepcopy(base), FullFinetuneConfig()))
    rows = []
    for label, config in [*ROWS, *peft_rows()]:  # the peft methods when the `peft` extra is installed
        trainable = count_trainable(inject(copy.deepcopy(base), config))
        rows.append(
            {
                "method": label,
                "config": config.to_dict(),
                "trainable": trainable,
                "millions": round(trainable / 1e6, 3),
                "percent_of_backbone": 100.0 * trainable / backbone_params,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = parameter_table(args.model, args.num_classes)
    print(f"Trainable parameters on {args.model} (head excluded, random weights)")
    width = max(len(row["method"]) for row in rows)
    print(f"{'method':<{width}} {'params':>12} {'(M)':>9} {'% backbone':>11}")
    for row in rows:
        print(
            f"{row['method']:<{width}} {row['trainable']:>12,} {row['millions']:>8.3f}M "
            f"{row['percent_of_backbone']:>10.3f}%"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0
