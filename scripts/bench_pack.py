"""Packed search (`--pack K`) against K separate runs: image-steps/s and memory per method and K, in one run.

Step: one training step (forward, the sum of per-point losses, backward, AdamW) of a pack of K grid points
(`training.packing.PackedNetwork`) against the step of one run of the plain injected network, on the same images;
`x separate` is the packed image-steps/s over a separate run's (K x batch / t_K against batch / t_1), so K separate
runs one after the other take `x separate` times longer than the pack. Memory: the bytes autograd saves for backward
in one step (each storage once, any device) and, on CUDA, the allocator's peak of a step above the resident model.
Variants run interleaved in rounds so that drift of the machine hits all alike; medians are reported.

End to end (`--protocol smoke`): the smoke protocol's wall clock with `--pack K` against `--pack 1`, each in a fresh
process and folder, interleaved, `--protocol-repeats` times (medians).

Projection: the GPU-hours (or hours on this device) of the whole VTAB-1k paper protocol for each method and model,
packed at each K against unpacked: the plan's image-epochs (`protocol --dry-run`), search at the packed rate and the
final runs at the separate one. It is meaningful for the backbone the plan trains (ViT-B/16 at 224 px, batch 32).

    python scripts/bench_pack.py --models vit_mini_patch8_32.procedural vit_small_patch16_224 --batch 32 \
        --ks 1 2 4 8 16 --protocol smoke
    python scripts/bench_pack.py --models vit_base_patch16_224 --batch 32 --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wegeft_vision.backbones import create_backbone
from wegeft_vision.methods import config_from_dict, inject
from wegeft_vision.training.cost import SavedBytes
from wegeft_vision.training.packing import PackedNetwork

METHODS = {
    "wegeft": {"method": "wegeft"},
    "lora": {"method": "lora"},
    "bitfit": {"method": "bitfit"},
    "vpt": {"method": "vpt"},
    "linear": {"method": "linear"},
}
PAPER_METHODS = {"wegeft": "wegeft", "lora": "lora", "bitfit": "bitfit", "vpt": "vpt", "linear": "linear"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_mini_patch8_32.procedural", "vit_small_patch16_224"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="skip larger K once a step takes longer")
    parser.add_argument("--protocol", help="also time this protocol preset end to end (e.g. smoke) at each K")
    parser.add_argument("--protocol-repeats", type=int, default=3)
    parser.add_argument(
        "--protocol-precisions",
        nargs="*",
        default=["32-true", "bf16-mixed"],
        help="compare each K's results with --pack 1's at these trainer precisions",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results/pack.json"))
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """A method on a model as K packed points (`points` > 0) or as one plain run (`points` 0)."""

    def __init__(self, base: torch.nn.Module, method: str, points: int, args: argparse.Namespace) -> None:
        self.method, self.points = method, points
        network = inject(copy.deepcopy(base), config_from_dict(METHODS[method])).to(args.device).train()
        if points:
            self.model = PackedNetwork(network, points)
            groups = [{"params": list(tensors), "lr": 1e-3 * (i + 1)} for i, tensors in enumerate(self.model.points)]
        else:
            self.model = network
            groups = [{"params": [p for p in network.parameters() if p.requires_grad], "lr": 1e-3}]
        self.optimizer = torch.optim.AdamW(groups)
        device = torch.device(args.device)
        self.autocast = torch.autocast(device.type, dtype=getattr(torch, args.dtype), enabled=args.dtype != "float32")
        self.times: list[float] = []

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            logits = self.model(images)
            if not self.points:
                return F.cross_entropy(logits, labels)
            return sum(F.cross_entropy(point, labels) for point in logits)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss(images, labels).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def saved_bytes(self, images: torch.Tensor, labels: torch.Tensor) -> int:
        """Bytes autograd keeps for backward in one step, the trainable tensors left out."""
        with SavedBytes() as saved:
            loss = self.loss(images, labels)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        trainable = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        return sum(n for ptr, n in saved.storages.items() if ptr not in trainable)

    def cuda_peak_bytes(self, images: torch.Tensor, labels: torch.Tensor) -> int | None:
        if images.device.type != "cuda":
            return None
        sync(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        resident = torch.cuda.memory_allocated(images.device)
        self.step(images, labels)
        sync(images.device)
        return torch.cuda.max_memory_allocated(images.device) - resident


def bench_steps(model_name: str, args: argparse.Namespace) -> list[dict]:
    """Every method at every K on one model, interleaved; one row per (method, K)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = create_backbone(model_name, num_classes=args.num_classes, pretrained=False)
    size = base.patch_embed.img_size
    images = torch.randn(args.batch, 3, *size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    rows = []
    for method in args.methods:
        separate = Variant(base, method, 0, args)
        variants = [separate]
        for k in args.ks:
            variant = Variant(base, method, k, args)
            variant.step(images, labels)  # warm-up
            sync(device)
            start = time.perf_counter()
            variant.step(images, labels)
            sync(device)
            variants.append(variant)
            if time.perf_counter() - start > args.max_seconds:
                print(f"{model_name} {method}: K={k} takes over {args.max_seconds:g} s a step; larger K skipped")
                break
        separate.step(images, labels)
        memory = {id(v): (v.saved_bytes(images, labels), v.cuda_peak_bytes(images, labels)) for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    variant.step(images, labels)
                sync(device)
                variant.times.append((time.perf_counter() - start) / args.steps)
        t1 = statistics.median(separate.times)
        for variant in variants[1:]:
            tk = statistics.median(variant.times)
            saved, peak = memory[id(variant)]
            rows.append(
                {
                    "model": model_name,
                    "method": method,
                    "K": variant.points,
                    "step_ms": 1e3 * tk,
                    "separate_step_ms": 1e3 * t1,
                    "image_steps_per_s": variant.points * args.batch / tk,
                    "separate_images_per_s": args.batch / t1,
                    "x_separate": variant.points * t1 / tk,
                    "saved_mib": saved / 2**20,
                    "separate_saved_mib": memory[id(separate)][0] / 2**20,
                    "cuda_peak_mib": None if peak is None else peak / 2**20,
                    "separate_cuda_peak_mib": None
                    if memory[id(separate)][1] is None
                    else memory[id(separate)][1] / 2**20,
                }
            )
    return rows


def bench_protocol(preset: str, ks: list[int], repeats: int, precisions: list[str]) -> tuple[list[dict], list[dict]]:
    """The preset's whole protocol (`wegeft-vision protocol`) in a fresh process and folder at each K, interleaved;
    then, once per precision, each K's results against `--pack 1`'s (rows and final adapters)."""
    times: dict[int, list[float]] = {k: [] for k in ks}
    agreement = []
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for k in ks:
                start = time.perf_counter()
                _protocol(preset, Path(folder) / f"pack{k}-{repeat}", k)
                times[k].append(time.perf_counter() - start)
        for precision in precisions:
            outs = {k: Path(folder) / f"{precision}-pack{k}" for k in ks}
            for k, out in outs.items():
                _protocol(preset, out, k, "--precision", precision)
            agreement += [{"precision": precision, "K": k, **_agreement(outs[1], outs[k])} for k in ks if k != 1]
    one = statistics.median(times[ks[0]])
    timed = [
        {"preset": preset, "K": k, "wall_s": statistics.median(t), "x_pack1": one / statistics.median(t)}
        for k, t in times.items()
    ]
    return timed, agreement


def _protocol(preset: str, out: Path, k: int, *options: str) -> None:
    command = [sys.executable, "-m", "wegeft_vision.cli", "protocol", "--config", preset, "--out", str(out)]
    command += ["--pack", str(k), "--no-progress", *options]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _agreement(alone: Path, packed: Path) -> dict:
    """Rows whose validation/test top-1 (last and best) agree, and the largest relative difference of a final
    adapter's tensor, between two run folders of the same protocol."""
    import csv

    from safetensors.torch import load_file

    def rows(out: Path) -> dict:
        with (out / "results.csv").open() as handle:
            return {(r["task"], r["method"], r["stage"], r["lr"], r["weight_decay"]): r for r in csv.DictReader(handle)}

    mine, theirs = rows(packed), rows(alone)
    same = sum(all(mine[k][c] == r[c] for c in ("top1", "best_top1")) for k, r in theirs.items() if k in mine)
    worst = 0.0
    for key, row in theirs.items():
        if row["stage"] == "final" and key in mine:
            a, b = (
                load_file(alone / row["run_dir"] / "adapter.safetensors"),
                load_file(packed / mine[key]["run_dir"] / "adapter.safetensors"),
            )
            for name, tensor in a.items():
                scale = max(tensor.abs().max().item(), 1e-30)
                worst = max(worst, (tensor - b[name]).abs().max().item() / scale)
    return {"rows": len(theirs), "same_top1": same, "adapter_max_rel_diff": worst}


def projection(rows: list[dict], device: str) -> list[dict]:
    """Hours of the whole VTAB-1k paper protocol per (model, method, K): search image-epochs at the pack's rate,
    final image-epochs at a separate run's (the plan of `protocol --config paper --dry-run`)."""
    from wegeft_vision.protocol import launch
    from wegeft_vision.protocol.plan import plan_runs
    from wegeft_vision.protocol.request import Request

    with tempfile.TemporaryDirectory() as folder:
        request = Request(
            preset="paper", out=Path(folder), benchmark="vtab-1k", tasks=["all"], methods=list(PAPER_METHODS)
        )
        plan = plan_runs(launch.prepare_plan(request))
    epochs: dict[tuple[str, str], int] = {}
    for run in plan:
        key = (run["method"], run["stage"])
        epochs[key] = epochs.get(key, 0) + run["epochs"] * run["train_images"]
    out = []
    for row in rows:
        label = PAPER_METHODS.get(row["method"])
        if label is None or (label, "search") not in epochs:
            continue
        search, final = epochs[(label, "search")], epochs[(label, "final")]
        unpacked = (search + final) / row["separate_images_per_s"] / 3600
        packed = (search / row["image_steps_per_s"] + final / row["separate_images_per_s"]) / 3600
        out.append(
            {
                **{k: row[k] for k in ("model", "method", "K")},
                "device": device,
                "hours": packed,
                "unpacked_hours": unpacked,
                "search_image_epochs": search,
                "final_image_epochs": final,
            }
        )
    return out


def main() -> None:
    args = parse_args()
    rows = [row for model in args.models for row in bench_steps(model, args)]
    print(
        f"batch {args.batch}, {args.device}, {args.dtype}, {args.rounds}x{args.steps} steps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'model':<30} {'method':<7} {'K':>3} {'step ms':>9} {'img-steps/s':>11} {'x separate':>10} "
        f"{'saved MiB':>9} {'x saved':>7} {'CUDA peak MiB':>13}"
    )
    for r in rows:
        peak = "" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
        print(
            f"{r['model']:<30} {r['method']:<7} {r['K']:>3} {r['step_ms']:>9.1f} {r['image_steps_per_s']:>11.1f} "
            f"{r['x_separate']:>10.2f} {r['saved_mib']:>9.1f} {r['saved_mib'] / r['separate_saved_mib']:>7.2f} "
            f"{peak:>13}"
        )
    protocol, agreement = [], []
    if args.protocol:
        ks = sorted({1, *[k for k in args.ks if k <= 4]})
        protocol, agreement = bench_protocol(args.protocol, ks, args.protocol_repeats, args.protocol_precisions)
    for r in protocol:
        print(f"protocol {r['preset']} --pack {r['K']}: {r['wall_s']:.1f} s end to end ({r['x_pack1']:.2f}x --pack 1)")
    for r in agreement:
        print(
            f"protocol {args.protocol} {r['precision']} --pack {r['K']} against --pack 1: {r['same_top1']}/{r['rows']} "
            f"rows with the same top-1, final adapters within {r['adapter_max_rel_diff']:.1e} relative"
        )
    projected = projection(rows, args.device)
    if projected:
        print("VTAB-1k paper protocol (plan: 1 seed, 19 tasks), hours on this device at the measured rates:")
        for r in projected:
            hours = f"{r['hours']:8.1f} h (unpacked {r['unpacked_hours']:.1f} h)"
            print(f"  {r['model']:<30} {r['method']:<7} K={r['K']:>2}: {hours}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "steps": rows,
        "protocol": protocol,
        "protocol_agreement": agreement,
        "projection": projected,
    }
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
