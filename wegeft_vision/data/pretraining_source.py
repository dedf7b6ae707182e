"""The shipped mini-ViT's procedural pretraining sources by name (`scripts/pretrain_mini_vit.py --source`), and how a
weights file records them.

- `leaves`: dead leaves (`data.leaves`): colour, texture and shape statistics;
- `glyphs`: random pen strokes (`data.glyphs`): shapes and their layout (the retired `glyphs` tag's source);
- `mixed` (the shipped `procedural` tag's): both, one sample in `every` a glyph, one head over both class sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .glyphs import GlyphSet
from .leaves import TRAIN_STREAM, LeavesSet

NAMES = ("leaves", "glyphs", "mixed")


@dataclass(frozen=True)
class MixedSource:
    """Dead leaves and glyphs in one classification task: sample `i` is glyph sample `i // every` when
    `i % every == 0`, else dead-leaves sample `i`; the glyph classes follow the leaves' (labels `leaves.num_classes`
    and up)."""

    leaves: LeavesSet
    glyphs: GlyphSet
    every: int = 2

    @property
    def num_classes(self) -> int:
        return self.leaves.num_classes + self.glyphs.num_classes

    def batch(
        self, indices: range | list[int], stream: int = TRAIN_STREAM, strength: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples as a (B, 3, H, W) uint8 tensor and their (B,) labels; `strength` scales the glyphs' jitter."""
        images, labels = [], []
        for i in indices:
            if i % self.every == 0:
                image, label = self.glyphs.batch([i // self.every], stream, strength)
                label = label + self.leaves.num_classes
            else:
                image, label = self.leaves.batch([i], stream)
            images.append(image)
            labels.append(label)
        return torch.cat(images), torch.cat(labels)


Source = LeavesSet | GlyphSet | MixedSource


def pretraining_source(
    name: str, classes: int, seed: int, size: int, zoom: bool = True, glyph_classes: int = 100
) -> Source:
    """The source `name` (see `NAMES`): `classes` leaves or glyph classes (`mixed`: leaves, beside `glyph_classes`
    glyph classes), drawn at `size` pixels from `seed`."""
    if name == "leaves":
        return LeavesSet(classes, seed, size, zoom=zoom)
    if name == "glyphs":
        return GlyphSet(classes, seed, size)
    if name == "mixed":
        return MixedSource(LeavesSet(classes, seed, size, zoom=zoom), GlyphSet(glyph_classes, seed, size))
    raise ValueError(f"unknown pretraining source {name!r}; expected one of {', '.join(NAMES)}")


def describe(name: str, source: Source) -> str:
    """The source as a weights file records it (`source_task`)."""
    if isinstance(source, MixedSource):
        return (
            f"mixed ({source.leaves.num_classes} leaves classes, wegeft_vision.data.leaves, "
            f"{{'zoom': {source.leaves.zoom}}}; {source.glyphs.num_classes} glyphs classes, wegeft_vision.data.glyphs; "
            f"one sample in {source.every} a glyph)"
        )
    options = {"zoom": source.zoom} if isinstance(source, LeavesSet) else {}
    return f"{name} ({source.num_classes} classes, {type(source).__module__}, {options})"
