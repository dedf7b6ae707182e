"""Images/s of the decoding loader vs the decoded-tensor cache on a VTAB-sized split (train800val200: 1,000 images).

The split is synthetic shapes data written in the VTAB-1k layout to a temporary folder (PNG, `--image-size` pixels),
served by `BenchmarkDataModule` (final stage, `paper` preset at the backbone's input size) three ways: decoding with
`--workers` DataLoader workers, from the memory-mapped cache, and from the cache held on `--device` (when not cpu).
Every batch is moved to `--device` and normalized there as in training (the cache's batches travel as uint8).
Each loader runs `--epochs` epochs after one warm-up epoch; the median epoch gives images/s. The one-time cost of
building the cache and of opening it (checksumming every file) is reported beside.

    python scripts/bench_data.py --workers 2 --json bench_results/data_cache_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wegeft_vision.backbones import DEFAULT_BACKBONE, data_config
from wegeft_vision.data import BenchmarkDataModule, write_synthetic


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="timm name whose data config sets the preset")
    parser.add_argument("--image-size", type=int, default=256, help="side of the stored PNG images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of the decoding loader")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=Path("bench_results/data_cache.json"))
    return parser.parse_args()


def epoch_rate(module: BenchmarkDataModule, epochs: int, device: str) -> float:
    """Median images/s over `epochs` epochs of the training loader, as training sees it: each batch moved to `device`
    and passed through `on_after_batch_transfer` (which normalizes the cache's uint8 batches there)."""
    loader = module.train_dataloader()
    rates = []
    for epoch in range(epochs + 1):
        start, seen = time.perf_counter(), 0
        for images, labels in loader:
            batch = (images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
            images, _ = module.on_after_batch_transfer(batch, 0)
            seen += images.shape[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if epoch:  # the first epoch warms up (worker start, page cache)
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    args = parse_args()
    config = data_config(args.backbone)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        folder = write_synthetic(tmp, "shape", {"train800": 800, "val200": 200, "test": 8}, size=args.image_size)
        generate_s = time.perf_counter() - start

        def module(**kw) -> BenchmarkDataModule:
            return BenchmarkDataModule(
                "vtab-1k/synthetic_shape", tmp, stage="final", manifest=folder / "manifest.yaml", data_config=config,
                batch_size=args.batch, num_workers=args.workers, **kw,
            )  # fmt: skip

        plain = module()
        plain.setup()
        rate = epoch_rate(plain, args.epochs, args.device)
        rows.append({"loader": f"decode ({args.workers} workers)", "images_per_s": rate})
        cache_dir = tmp / "cache"
        start = time.perf_counter()
        module(cache_dir=cache_dir).setup()
        build_s = time.perf_counter() - start
        cached = module(cache_dir=cache_dir)
        start = time.perf_counter()
        cached.setup()
        open_s = time.perf_counter() - start
        rows.append({"loader": "cache (memory-mapped)", "images_per_s": epoch_rate(cached, args.epochs, args.device)})
        if args.device != "cpu":
            held = module(cache_dir=cache_dir, cache_device=args.device)
            held.setup()
            rate = epoch_rate(held, args.epochs, args.device)
            rows.append({"loader": f"cache (held on {args.device})", "images_per_s": rate})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base
    size = config["input_size"][-1]
    print(f"VTAB-sized split: 1,000 PNG images {args.image_size}px -> {size}px ({config['interpolation']}), "
          f"batch {args.batch}, device {args.device}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'loader':<26} {'images/s':>10} {'speed-up':>9}")
    for row in rows:
        print(f"{row['loader']:<26} {row['images_per_s']:>10,.0f} {row['speedup']:>8.1f}x")
    print(f"one-time: generate {generate_s:.1f}s, build cache {build_s:.1f}s, open cache (checksums) {open_s:.2f}s")
    result = {
        "split": "train800val200 (synthetic)",
        "images": 1000,
        "image_size": args.image_size,
        "input_size": size,
        "batch": args.batch,
        "device": args.device,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cache_build_s": build_s,
        "cache_open_s": open_s,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
