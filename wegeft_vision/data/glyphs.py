"""Procedural glyphs: the source task the shipped mini-ViT was pretrained on (`scripts/pretrain_mini_vit.py`).

Each class is a fixed set of 2-4 random curved pen strokes (cubic Bezier curves in the unit square). Every sample
draws its class's strokes with a per-image jitter of the control points, position, rotation, shear, scale, pen
thickness, ink and background colour. Sample `i` of stream `s` depends only on `(seed, s, i)`, so any held-out
stream is reproducible without storing images.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

TRAIN_STREAM = 0
HELD_OUT_STREAM = 1
_SUPERSAMPLE = 2  # drawn at twice the size, then area-averaged: smooth anti-aliased strokes
_CURVE_POINTS = 24
_SUBPIXEL_BITS = 4  # cv2 drawing with fixed-point coordinates (1/16 pixel)


@dataclass(frozen=True)
class GlyphSet:
    """The glyph classes of one seed.

    Args:
        num_classes: number of glyph classes.
        seed: the seed that fixes every class's strokes and every sample's jitter.
        size: image side in pixels.
    """

    num_classes: int = 100
    seed: int = 0
    size: int = 32

    def strokes(self, label: int) -> list[np.ndarray]:
        """The class's strokes: a list of (4, 2) Bezier control points in [0.12, 0.88]^2."""
        if not 0 <= label < self.num_classes:
            raise ValueError(f"glyph class {label} is outside 0..{self.num_classes - 1}")
        rng = np.random.default_rng([self.seed, 7919, label])
        count = int(rng.integers(2, 5))
        return [rng.uniform(0.12, 0.88, (4, 2)) for _ in range(count)]

    def label(self, index: int, stream: int = TRAIN_STREAM) -> int:
        """The class of sample `index` (classes cycle, so every `num_classes` samples hold each class once)."""
        return index % self.num_classes

    def render(self, index: int, stream: int = TRAIN_STREAM, strength: float = 1.0) -> np.ndarray:
        """Sample `index` of `stream` as an (H, W, 3) uint8 RGB image.

        Args:
            index: sample number.
            stream: which stream (training, held-out, ...).
            strength: scales the geometric jitter (0: every glyph upright, centred, at one size; 1: the full jitter).
        """
        rng = np.random.default_rng([self.seed, stream, index])
        label = self.label(index, stream)
        canvas = self.size * _SUPERSAMPLE
        background, ink = _colours(rng)
        image = _background(rng, canvas, background)
        transform = _jitter(rng, strength) * canvas
        thickness = int(rng.integers(2, 7))
        ts = np.linspace(0.0, 1.0, _CURVE_POINTS)[:, None]
        basis = np.hstack([(1 - ts) ** 3, 3 * ts * (1 - ts) ** 2, 3 * ts**2 * (1 - ts), ts**3])  # (T, 4)
        for control in self.strokes(label):
            control = control + rng.normal(0.0, 0.025 * strength, control.shape)  # the hand's variation
            curve = basis @ control - 0.5  # (T, 2), centred
            points = curve @ transform[:, :2].T + transform[:, 2]
            fixed = np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)
            cv2.polylines(image, [fixed], False, ink, thickness, cv2.LINE_AA, shift=_SUBPIXEL_BITS)
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        noise = rng.normal(0.0, rng.uniform(0.0, 8.0), image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)

    def batch(
        self, indices: range | list[int], stream: int = TRAIN_STREAM, strength: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples as a (B, 3, H, W) uint8 tensor and their (B,) labels (`strength` as in `render`)."""
        images = np.stack([self.render(i, stream, strength) for i in indices]).transpose(0, 3, 1, 2)
        labels = [self.label(i, stream) for i in indices]
        return torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Background and ink colours whose luminance differs by at least 70 (of 255)."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        background, ink = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(weights @ background - weights @ ink) >= 70:
            return background, tuple(float(v) for v in ink)


def _background(rng: np.random.Generator, canvas: int, colour: np.ndarray) -> np.ndarray:
    """A flat colour with a random linear gradient."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:canvas, 0:canvas] / canvas - 0.5
    ramp = (xs * np.cos(angle) + ys * np.sin(angle))[..., None] * rng.uniform(0, 60, 3)
    return np.ascontiguousarray(np.clip(colour + ramp, 0, 255).astype(np.uint8))


def _jitter(rng: np.random.Generator, strength: float) -> np.ndarray:
    """A (2, 3) affine map of the centred unit square: scale, shear, rotation, then a shift, in canvas units."""
    scale = (0.875 + strength * rng.uniform(-0.175, 0.175)) * np.exp(strength * rng.normal(0.0, 0.08, 2))
    shear = strength * rng.uniform(-0.3, 0.3)
    angle = strength * rng.uniform(-0.45, 0.45)
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    shift = 0.5 + strength * rng.uniform(-0.1, 0.1, 2)
    return np.hstack([linear, shift[:, None]])
