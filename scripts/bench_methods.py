"""Training-step time and memory of every method on one architecture, as ratios to LoRA and to the frozen backbone.

Variants: every named method variant (`wegeft_vision.methods.variants()`: each method's default config, WeGeFT's forms,
each g_theta of Table 8 and GIFT v1's PaCa, peft's methods when installed), WeGeFT on its factored and naive
weight-space paths (the latter rebuilds W_hat every step, as reference code does), and `frozen`: every weight frozen
but the gradient still taken through all blocks (from the patch tokens), the floor for any method that adapts the
first block. Variants run interleaved in rounds so that drift of the machine hits all of them alike; the median step is
reported. Memory is the bytes autograd saves for backward (any device) plus, on CUDA, the peak allocation of a step
above the resident model.

    python scripts/bench_methods.py --model vit_small_patch16_224 --batch 8 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from wegeft_vision.backbones import create_backbone
from wegeft_vision.methods import LinearProbeConfig, WeGeFTConfig, count_trainable, inject, merge, variants

# The catalogue's variants (peft's too when installed), and what only this benchmark measures: the floor `frozen` and
# WeGeFT's other compute paths.
VARIANTS = {
    "frozen": LinearProbeConfig(),
    **{variant.name: variant.config() for variant in variants()},
    "wegeft-factored": WeGeFTConfig(compute="factored"),
    "wegeft-naive-weight": WeGeFTConfig(compute="weight"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("bench_results/methods.json"))
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One method on its own copy of the backbone, with its optimizer and a training step."""

    def __init__(self, name: str, base: torch.nn.Module, args: argparse.Namespace) -> None:
        self.name = name
        self.model = inject(copy.deepcopy(base), VARIANTS[name]).to(args.device).train()
        if name == "frozen":  # take the gradient from the patch tokens up, with no weight of the backbone to update
            self.model.patch_embed.register_forward_hook(lambda module, inputs, out: out.requires_grad_())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.params = count_trainable(self.model)
        self.autocast = torch.autocast(
            torch.device(args.device).type, dtype=getattr(torch, args.dtype), enabled=args.dtype != "float32"
        )
        self.times: list[float] = []

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.autocast:
            loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def saved_activation_bytes(self, images: torch.Tensor, labels: torch.Tensor) -> int:
        """Bytes autograd keeps for backward in one forward (each storage once)."""
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        trainable = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast:
            loss = F.cross_entropy(self.model(images), labels)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(n for ptr, n in storages.items() if ptr not in trainable)

    def cuda_peak_bytes(self, images: torch.Tensor, labels: torch.Tensor) -> int | None:
        device = images.device
        if device.type != "cuda":
            return None
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        self.step(images, labels)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - resident


def time_inference(model: torch.nn.Module, images: torch.Tensor, rounds: int, steps: int) -> float:
    device = images.device
    with torch.no_grad():
        model(images)
        times = []
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                model(images)
            sync(device)
            times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = create_backbone(args.model, num_classes=args.num_classes, pretrained=False, img_size=args.img_size)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    variants = []
    for name in args.variants:
        try:
            variants.append(Variant(name, base, args))
        except ValueError as error:  # a method that does not fit this model (e.g. VB-LoRA's vector length)
            print(f"skipped {name}: {' '.join(str(error).split())}", file=sys.stderr)

    memory = {}
    for v in variants:
        memory[v.name] = (v.saved_activation_bytes(images, labels), v.cuda_peak_bytes(images, labels))
        for _ in range(args.warmup):
            v.step(images, labels)
    for _ in range(args.rounds):
        for v in variants:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                v.step(images, labels)
            sync(device)
            v.times.append((time.perf_counter() - start) / args.steps)

    step = {v.name: statistics.median(v.times) for v in variants}
    rows = []
    for v in variants:
        saved, peak = memory[v.name]
        rows.append(
            {
                "variant": v.name,
                "trainable_params": v.params,
                "step_ms": 1e3 * step[v.name],
                "x_lora": step[v.name] / step["lora"] if "lora" in step else None,
                "x_frozen": step[v.name] / step["frozen"] if "frozen" in step else None,
                "saved_activations_mib": saved / 2**20,
                "saved_x_lora": saved / memory["lora"][0] if "lora" in memory else None,
                "cuda_peak_mib": None if peak is None else peak / 2**20,
            }
        )

    inference = {}
    if "wegeft" in step:
        plain = copy.deepcopy(base).to(device).eval()
        adapted = next(v.model for v in variants if v.name == "wegeft").eval()
        with torch.no_grad():
            unmerged_logits = adapted(images)
        merge(adapted)
        with torch.no_grad():
            max_diff = (adapted(images) - unmerged_logits).abs().max().item()
        t_plain = time_inference(plain, images, args.rounds, args.steps)
        t_merged = time_inference(adapted, images, args.rounds, args.steps)
        inference = {
            "plain_ms": 1e3 * t_plain,
            "merged_wegeft_ms": 1e3 * t_merged,
            "merged_x_plain": t_merged / t_plain,
            "merged_vs_unmerged_max_abs_diff": max_diff,
        }

    header = (
        f"{'variant':<20} {'params':>11} {'step ms':>9} {'x LoRA':>7} {'x frozen':>8} {'saved MiB':>10} {'x LoRA':>7}"
    )
    header += f" {'CUDA peak MiB':>13}"
    print(
        f"{args.model} @ {args.img_size}px, batch {args.batch}, {args.device}, {args.dtype}, "
        f"{args.rounds}x{args.steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(header)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in rows:
        print(
            f"{r['variant']:<20} {r['trainable_params']:>11,} {r['step_ms']:>9.1f} {fmt(r['x_lora'], '>7.3f')} "
            f"{fmt(r['x_frozen'], '>8.3f')} {r['saved_activations_mib']:>10.1f} {fmt(r['saved_x_lora'], '>7.3f')} "
            f"{fmt(r['cuda_peak_mib'], '>13.1f')}"
        )
    if inference:
        print(
            f"inference: plain {inference['plain_ms']:.1f} ms, merged WeGeFT {inference['merged_wegeft_ms']:.1f} ms "
            f"({inference['merged_x_plain']:.3f}x), merged vs unmerged logits max |diff| "
            f"{inference['merged_vs_unmerged_max_abs_diff']:.2e}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
    }
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(
        json.dumps({"settings": settings, "env": env, "rows": rows, "inference": inference}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
