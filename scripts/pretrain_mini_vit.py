"""Pretrain the shipped mini-ViT (`vit_mini_patch8_32.glyphs`) on procedural glyphs, deterministically by seed.

    python scripts/pretrain_mini_vit.py   # writes wegeft_vision/backbones/weights/vit_mini_patch8_32.glyphs.safetensors

Every step draws fresh glyphs (`wegeft_vision.data.glyphs`, 100 classes; sample i of the training stream depends only
on the seed and i), so the data never repeats; a held-out stream measures top-1 as training goes. The same seed,
steps and thread count give the same weights. The file holds the fp16 weights, head included, and the run's record
in its metadata (data config, seed, steps, held-out top-1 of the fp16 weights, elapsed time); the held-out curve is
printed and, with --json, written.

Threads: on a 2-core machine, one training thread plus one loader process that draws the glyphs uses both cores;
two training threads with another process busy ran several times slower.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.scheduler import CosineLRScheduler
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from wegeft_vision.backbones import create_backbone, mini_vit
from wegeft_vision.data.glyphs import HELD_OUT_STREAM, TRAIN_STREAM, GlyphSet


class GlyphBatches(Dataset):
    """Whole uint8 batches of the training stream, indexed by lists of sample numbers (for a `BatchSampler`).

    The geometric jitter grows linearly from none to full over the first `ramp` samples: a ViT trained from scratch
    on fully jittered glyphs stays at chance for hundreds of steps, upright glyphs first get it going.
    """

    def __init__(self, glyphs: GlyphSet, ramp: int) -> None:
        self.glyphs, self.ramp = glyphs, ramp

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        strength = min(1.0, indices[0] / self.ramp) if self.ramp else 1.0
        return self.glyphs.batch(indices, TRAIN_STREAM, strength)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(mini_vit.DATA_CONFIG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(mini_vit.DATA_CONFIG["std"]).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum(
        (model(normalize(images[i : i + batch])).argmax(1) == labels[i : i + batch]).sum().item()
        for i in range(0, len(images), batch)
    )
    model.train()
    return 100.0 * correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=mini_vit.WEIGHTS_FILE, help="safetensors file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the glyph classes, the samples and the init")
    parser.add_argument("--steps", type=int, default=3300, help="optimizer steps (each on fresh glyphs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--jitter-ramp", type=float, default=0.25, help="share of the steps over which jitter grows")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--loader-workers", type=int, default=1, help="processes drawing glyphs (0: in-process)")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between held-out evaluations")
    parser.add_argument("--held-out", type=int, default=5000, help="held-out samples (50 per class by default)")
    parser.add_argument("--json", type=Path, help="also write the held-out curve and the settings here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    glyphs = GlyphSet(mini_vit.SOURCE_CLASSES, args.seed, mini_vit.DATA_CONFIG["input_size"][-1])
    model = create_backbone(mini_vit.ARCHITECTURE, num_classes=glyphs.num_classes, init_seed=args.seed)
    held_images, held_labels = glyphs.batch(range(args.held_out), HELD_OUT_STREAM)
    sampler = BatchSampler(SequentialSampler(range(args.steps * args.batch_size)), args.batch_size, drop_last=True)
    loader = DataLoader(
        GlyphBatches(glyphs, round(args.jitter_ramp * args.steps * args.batch_size)),
        sampler=sampler,
        batch_size=None,
        num_workers=args.loader_workers,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = CosineLRScheduler(
        optimizer,
        t_initial=args.steps,
        lr_min=args.lr * 0.01,
        warmup_t=args.warmup_steps,
        warmup_lr_init=1e-6,
        t_in_epochs=False,  # stepped per optimizer step
    )
    print(
        f"pretraining {mini_vit.ARCHITECTURE} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
        f"{glyphs.num_classes} glyph classes, seed {args.seed}: {args.steps} steps of {args.batch_size} fresh glyphs, "
        f"{args.threads} thread(s); held-out top-1 on {args.held_out} glyphs (chance {100 / glyphs.num_classes:.1f}%)",
        flush=True,
    )
    curve, started, running = [], time.monotonic(), 0.0
    for step, (images, labels) in enumerate(loader, start=1):
        loss = F.cross_entropy(model(normalize(images)), labels, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step_update(step)
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = top1(model, held_images, held_labels)
            elapsed = time.monotonic() - started
            curve.append({"step": step, "loss": round(running, 4), "held_out_top1": accuracy, "elapsed_s": elapsed})
            print(
                f"step {step:>5}/{args.steps}  loss {running:.3f}  held-out top-1 {accuracy:5.2f}%  "
                f"elapsed {timedelta(seconds=round(elapsed))}",
                flush=True,
            )

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})  # measure what ships: the fp16 weights
    shipped = top1(model, held_images, held_labels)
    elapsed = time.monotonic() - started
    record = {
        "source_task": f"glyphs ({glyphs.num_classes} classes, wegeft_vision.data.glyphs)",
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "jitter_ramp": args.jitter_ramp,
        "label_smoothing": args.label_smoothing,
        "threads": args.threads,
        "held_out": args.held_out,
        "held_out_top1_fp16": shipped,
        "elapsed_s": round(elapsed, 1),
        "data_config": mini_vit.DATA_CONFIG,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={k: json.dumps(v) for k, v in record.items()})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**record, "curve": curve}, indent=1) + "\n")
    print(
        f"held-out top-1 of the fp16 weights: {shipped:.2f}% (chance {100 / glyphs.num_classes:.1f}%); "
        f"wrote {args.out} in {timedelta(seconds=round(elapsed))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
