"""Pretrain the shipped mini-ViT (`vit_mini_patch8_32.procedural`) on procedural images, deterministically by seed.

    python scripts/pretrain_mini_vit.py   # wegeft_vision/backbones/weights/vit_mini_patch8_32.procedural.safetensors

Every step draws fresh samples of the source task (`wegeft_vision.data.pretraining_source`; default `mixed`: 200
classes of dead leaves, `wegeft_vision.data.leaves`, that differ in palette, texture and shape, and one sample in two
from 100 classes of glyphs, `wegeft_vision.data.glyphs`, random pen strokes for shapes and their layout; `leaves` and
`glyphs` alone are the other choices); sample i of the training stream depends only on the seed and i, so the data
never repeats, and no photograph is ever used. Beside the classification loss, every output token reconstructs the
pixels of its own patch (`--pixel-weight`; the linear decoder is not shipped), so the features keep what the pixels
hold. A held-out stream measures top-1 as training goes. The same seed, steps and thread count give the same
weights. The file holds the fp16 weights, head included, and the run's record in its metadata (source, pooling,
reconstruction weight, data config, seed, steps, held-out top-1 of the fp16 weights, elapsed time); the held-out
curve is printed and, with --json, written.

Threads: on a 2-core machine, one training thread plus one loader process that draws the samples uses both cores;
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
from wegeft_vision.data.leaves import HELD_OUT_STREAM, TRAIN_STREAM
from wegeft_vision.data.pretraining_source import NAMES, Source, describe, pretraining_source


class SourceBatches(Dataset):
    """Whole uint8 batches of the training stream, indexed by lists of sample numbers (for a `BatchSampler`).

    The glyphs' geometric jitter grows linearly from none to full over the first `ramp` samples: a ViT trained from
    scratch on fully jittered glyphs stays at chance for hundreds of steps, upright glyphs first get it going.
    """

    def __init__(self, source: Source, ramp: int) -> None:
        self.source, self.ramp = source, ramp

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        strength = min(1.0, indices[0] / self.ramp) if self.ramp else 1.0
        return self.source.batch(indices, TRAIN_STREAM, strength)


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
    parser.add_argument("--source", choices=NAMES, default="mixed", help="the procedural source task")
    parser.add_argument("--glyph-classes", type=int, default=100, help="mixed: glyph classes beside the leaves")
    parser.add_argument("--classes", type=int, default=200, help="leaves or glyph classes (mixed: the leaves')")
    parser.add_argument("--global-pool", default=mini_vit.ARCHITECTURE_ARGS["global_pool"], help="token or avg")
    parser.add_argument("--no-zoom", action="store_true", help="leaves: every sample shows the whole scene")
    parser.add_argument("--pixel-weight", type=float, default=1.0, help="weight of each token's patch reconstruction")
    parser.add_argument("--seed", type=int, default=0, help="seed of the source classes, the samples and the init")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (each on fresh samples)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--jitter-ramp", type=float, default=0.25, help="share of the steps over which jitter grows")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--loader-workers", type=int, default=1, help="processes drawing samples (0: in-process)")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between held-out evaluations")
    parser.add_argument("--held-out", type=int, default=5000, help="held-out samples (25 per class by default)")
    parser.add_argument("--json", type=Path, help="also write the held-out curve and the settings here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    side = mini_vit.DATA_CONFIG["input_size"][-1]
    source = pretraining_source(args.source, args.classes, args.seed, side, not args.no_zoom, args.glyph_classes)
    model = create_backbone(
        mini_vit.ARCHITECTURE, num_classes=source.num_classes, init_seed=args.seed, global_pool=args.global_pool
    )
    patch = model.patch_embed.patch_size[0]
    with torch.random.fork_rng(devices=[]):  # the decoder's init is part of the run: seeded like the model's
        torch.manual_seed(args.seed)
        pixel_head = torch.nn.Linear(model.num_features, 3 * patch**2)  # not shipped: each token's own patch
    held_images, held_labels = source.batch(range(args.held_out), HELD_OUT_STREAM)
    sampler = BatchSampler(SequentialSampler(range(args.steps * args.batch_size)), args.batch_size, drop_last=True)
    loader = DataLoader(
        SourceBatches(source, round(args.jitter_ramp * args.steps * args.batch_size)),
        sampler=sampler,
        batch_size=None,
        num_workers=args.loader_workers,
    )
    trained = [*model.parameters(), *(pixel_head.parameters() if args.pixel_weight else [])]
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=args.weight_decay)
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
        f"{source.num_classes} {args.source} classes, seed {args.seed}: {args.steps} steps of {args.batch_size} fresh "
        f"samples, {args.threads} thread(s); held-out top-1 on {args.held_out} samples "
        f"(chance {100 / source.num_classes:.1f}%)",
        flush=True,
    )
    curve, started, running = [], time.monotonic(), 0.0
    for step, (images, labels) in enumerate(loader, start=1):
        inputs = normalize(images)
        tokens = model.forward_features(inputs)
        pooled = model.forward_head(tokens, pre_logits=True)
        loss = F.cross_entropy(model.head(pooled), labels, label_smoothing=args.label_smoothing)
        if args.pixel_weight:  # every output token reconstructs the pixels of its own patch
            target = F.unfold(inputs, patch, stride=patch).transpose(1, 2)  # (B, N, 3 * patch**2)
            loss = loss + args.pixel_weight * F.mse_loss(pixel_head(tokens[:, model.num_prefix_tokens :]), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
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
        "source_task": describe(args.source, source),
        "global_pool": args.global_pool,
        "pixel_weight": args.pixel_weight,
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
        f"held-out top-1 of the fp16 weights: {shipped:.2f}% (chance {100 / source.num_classes:.1f}%); "
        f"wrote {args.out} in {timedelta(seconds=round(elapsed))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
