"""How a backbone transfers to natural photographs it never saw, against the same architecture at random init.

    python scripts/eval_transfer.py                                   # the shipped mini-ViT, the full table
    python scripts/eval_transfer.py --backbone vit_mini_patch8_32.procedural --weights FILE --quick

Tasks (written under --data, from photographs that ship inside scikit-learn and matplotlib, `demo.photos`, and
scikit-learn's digits, `demo.tasks`): crop-source classification at three crop sizes, patch colour/texture kinds, and
digits. Columns: the linear probe on the pretrained backbone, the linear probe on a random-init backbone of the same
architecture, WeGeFT on the pretrained backbone, and a logistic regression on the raw pixels. Probes and WeGeFT run
the `transfer` protocol preset (search on val200, final on train800val200 -> test, as `wegeft-vision protocol`);
`--quick` instead fits scikit-learn's logistic regression on frozen features (`demo.probe`: the pooled features,
standardized, C selected on val200; no WeGeFT column), seconds per task, for comparing pretraining variants.
Deterministic: same tasks, seeds and results.
Prints a Markdown table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from wegeft_vision.backbones import create_backbone
from wegeft_vision.backbones.mini_vit import NAME as SHIPPED
from wegeft_vision.data.folders import MANIFEST_FILE
from wegeft_vision.demo.photos import CROP_SIDES, write_photo_crops, write_photo_patches
from wegeft_vision.demo.pixels import pixel_logistic_regression
from wegeft_vision.demo.probe import linear_probe
from wegeft_vision.demo.tasks import write_digits

TASKS = {
    **{f"photo_crops_{side}": (lambda out, side=side: write_photo_crops(out, side)) for side in CROP_SIDES},
    "photo_patches": write_photo_patches,
    "digits": write_digits,
}
PHOTO_TASKS = [name for name in TASKS if name.startswith("photo")]


def write_tasks(data: Path, names: list[str]) -> dict[str, Path]:
    """The task folders under `data`, written once (a rerun keeps them)."""
    folders = {}
    for name in names:
        folder = data / name
        folders[name] = folder if (folder / MANIFEST_FILE).is_file() else TASKS[name](data)
    return folders


def quick_table(
    backbone: str, weights: Path | None, folders: dict[str, Path], overrides: dict
) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    pretrained = create_backbone(backbone, num_classes=0, pretrained=weights is None, weights=weights, **overrides)
    architecture = backbone.split(".")[0]
    random_init = create_backbone(architecture, num_classes=0, pretrained=False, init_seed=0, **overrides)
    rows = {}
    for name, folder in folders.items():
        rows[name] = {
            "pretrained probe": linear_probe(pretrained, folder).top1,
            "random-init probe": linear_probe(random_init, folder).top1,
            "raw pixels": pixel_logistic_regression(folder),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[name].items()), flush=True)
    return rows


def full_table(backbone: str, weights: Path | None, folders: dict[str, Path], out: Path) -> dict[str, dict]:
    """The `transfer` preset's search-then-final runs (linear, linear_random, wegeft) on every task."""
    from wegeft_vision.protocol.launch import Request, run

    overrides = {"model.backbone": backbone, "data.cache_dir": str(out / "cache")}
    if weights is not None:
        overrides["model.weights"] = str(weights)
    request = Request(
        preset="transfer",
        out=out,
        tasks=[str(f) for f in folders.values()],
        overrides=overrides,
        progress=False,
        poll=1.0,
    )
    if run(request, workers=2):
        raise SystemExit(f"the transfer protocol failed; see {out}")
    with (out / "results.csv").open(newline="") as handle:
        finals = [row for row in csv.DictReader(handle) if row["stage"] == "final"]
    columns = {"linear": "pretrained probe", "linear_random": "random-init probe", "wegeft": "WeGeFT"}
    rows: dict[str, dict] = {name: {} for name in folders}
    for row in finals:
        rows[row["task"]][columns[row["method"]]] = float(row["top1"])
    for name, folder in folders.items():
        rows[name]["raw pixels"] = pixel_logistic_regression(folder)
    return rows


def markdown(rows: dict[str, dict[str, float]]) -> str:
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [
        f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.1f}" for c in columns) + " |"
        for name, row in rows.items()
    ]
    photos = [row for name, row in rows.items() if name in PHOTO_TASKS]
    if photos and all("pretrained probe" in row for row in photos):
        margin = min(row["pretrained probe"] - row["random-init probe"] for row in photos)
        lines.append(f"\nsmallest margin of the pretrained over the random-init probe (photographs): {margin:+.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=SHIPPED, help="timm architecture.tag (default: the shipped mini-ViT)")
    parser.add_argument("--weights", type=Path, help="a local weights file for the backbone instead of the tag's")
    parser.add_argument("--data", type=Path, default=Path("runs/transfer/data"), help="where the tasks are written")
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"), help="run folder of the full table")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="frozen-feature logistic regression, no WeGeFT")
    parser.add_argument("--architecture-args", type=json.loads, default={}, help="timm arguments (JSON), --quick")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(1 if not args.quick else 2)
    started = time.monotonic()
    folders = write_tasks(args.data, args.tasks)
    if args.quick:
        rows = quick_table(args.backbone, args.weights, folders, args.architecture_args)
    else:
        rows = full_table(args.backbone, args.weights, folders, args.out)
    print(markdown(rows))
    elapsed = time.monotonic() - started
    print(f"{'quick' if args.quick else 'full'} table of {args.backbone} in {elapsed:.0f} s", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"backbone": args.backbone, "weights": str(args.weights or ""), "quick": args.quick, "rows": rows}
        args.json.write_text(json.dumps({**record, "elapsed_s": round(elapsed, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
