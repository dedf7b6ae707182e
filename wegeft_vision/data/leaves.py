"""Procedural dead-leaves images: a pretraining source whose classes differ in colour palette, texture and shape
statistics, the way natural images differ (Lee, Mumford & Huang, 2001; Baradad et al., NeurIPS 2021).

A class is a recipe: a palette of 2-5 colours, a mix of leaf shapes (discs, ellipses, squares, triangles, strokes), a
power law of leaf sizes, a mix of fills (flat, stripes of the class's period and angle, fine grain, a gradient), a
number of leaves and a blur. A sample paints a random realization of its class's recipe, leaf over leaf: positions,
sizes, rotations and the palette's small per-leaf variation are random, the class's statistics are not. So telling the
classes apart takes colour, texture and shape, at any position: what the features of a backbone for photographs must
keep (a source that jitters colour away teaches them to drop it). Sample `i` of stream `s` depends only on
`(seed, s, i)`, as for the glyphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import torch

TRAIN_STREAM = 0
HELD_OUT_STREAM = 1
SHAPES = ("disc", "ellipse", "square", "triangle", "stroke")
FILLS = ("flat", "stripes", "grain", "gradient")
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Recipe:
    """What every sample of one class shares."""

    palette: np.ndarray  # (k, 3) RGB
    shapes: np.ndarray  # weights over SHAPES
    fills: np.ndarray  # weights over FILLS
    size_range: tuple[float, float]  # leaf radius, as a share of the image side
    size_power: float  # exponent of the power law over radii (natural images: about 3)
    leaves: tuple[int, int]
    stripe_period: float  # in pixels of the image
    stripe_angle: float
    blur: float


@dataclass(frozen=True)
class LeavesSet:
    """The dead-leaves classes of one seed.

    Args:
        num_classes: number of classes (recipes).
        seed: the seed that fixes every recipe and every sample.
        size: image side in pixels.
        zoom: half of the samples show a random part of the scene (from 30% of its side), scaled up.
    """

    num_classes: int = 200
    seed: int = 0
    size: int = 32
    zoom: bool = True

    @cached_property
    def recipes(self) -> list[Recipe]:
        return [self._recipe(label) for label in range(self.num_classes)]

    def _recipe(self, label: int) -> Recipe:
        rng = np.random.default_rng([self.seed, 104729, label])
        low = rng.uniform(0.04, 0.14)
        return Recipe(
            palette=natural_colours(rng, int(rng.integers(2, 6))),
            shapes=rng.dirichlet(np.full(len(SHAPES), 0.5)),
            fills=rng.dirichlet(np.full(len(FILLS), 0.5)),
            size_range=(low, low * rng.uniform(2.5, 6.0)),
            size_power=rng.uniform(1.5, 3.5),
            leaves=(int(rng.integers(6, 16)), int(rng.integers(20, 48))),
            stripe_period=rng.uniform(2.5, 7.0),
            stripe_angle=rng.uniform(0, np.pi),
            blur=rng.uniform(0.0, 0.9),
        )

    def label(self, index: int, stream: int = TRAIN_STREAM) -> int:
        """The class of sample `index` (classes cycle, so every `num_classes` samples hold each class once)."""
        return index % self.num_classes

    def render(self, index: int, stream: int = TRAIN_STREAM) -> np.ndarray:
        """Sample `index` of `stream` as an (H, W, 3) uint8 RGB image."""
        rng = np.random.default_rng([self.seed, stream, index])
        recipe = self.recipes[self.label(index, stream)]
        canvas = self.size * _SUPERSAMPLE
        image = np.empty((canvas, canvas, 3), np.float32)
        image[:] = _jittered(rng, recipe.palette[rng.integers(len(recipe.palette))])
        ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
        for _ in range(int(rng.integers(*recipe.leaves))):
            mask = _leaf(rng, recipe, canvas)
            fill = _fill(rng, recipe, xs, ys, canvas)
            image[mask] = fill[mask]
        if self.zoom and rng.uniform() < 0.5:  # a closer look at part of the scene, as photographs frame things
            side = int(canvas * rng.uniform(0.3, 1.0))
            top, left = rng.integers(0, canvas - side + 1, 2)
            image = image[top : top + side, left : left + side]
        interpolation = cv2.INTER_AREA if image.shape[0] >= self.size else cv2.INTER_CUBIC
        image = cv2.resize(image, (self.size, self.size), interpolation=interpolation)
        if recipe.blur > 0.3:
            image = cv2.GaussianBlur(image, (0, 0), recipe.blur)
        image += rng.normal(0.0, rng.uniform(0.0, 6.0), image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8)

    def batch(
        self, indices: range | list[int], stream: int = TRAIN_STREAM, strength: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples as a (B, 3, H, W) uint8 tensor and their (B,) labels (`strength` is the glyphs' jitter ramp,
        unused: a recipe's realizations vary from the first step)."""
        images = np.stack([self.render(i, stream) for i in indices]).transpose(0, 3, 1, 2)
        labels = [self.label(i, stream) for i in indices]
        return torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels)


def natural_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` RGB colours drawn as photographs' colours fall: any lightness and hue, chroma mostly low (CIELAB;
    a half-normal of scale 35), where uniform RGB would be mostly saturated."""
    lab = np.stack(
        [rng.uniform(8.0, 96.0, count), *(np.abs(rng.normal(0.0, 35.0, count)) * trig for trig in _hues(rng, count))],
        axis=1,
    )
    pixels = cv2.cvtColor(lab.astype(np.float32)[None], cv2.COLOR_Lab2RGB)[0]  # float Lab in, RGB in [0, 1] out
    return np.clip(pixels * 255.0, 0, 255)


def _hues(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    hue = rng.uniform(0, 2 * np.pi, count)
    return np.cos(hue), np.sin(hue)


def _jittered(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    return np.clip(colour + rng.normal(0.0, 10.0, 3), 0, 255).astype(np.float32)


def _leaf(rng: np.random.Generator, recipe: Recipe, canvas: int) -> np.ndarray:
    """The boolean mask of one leaf: a shape of the recipe's mix, its radius from the recipe's power law."""
    low, high = recipe.size_range
    u = rng.uniform()
    a = 1.0 - recipe.size_power  # inverse CDF of p(r) ~ r^-power on [low, high]
    radius = canvas * (low**a + u * (high**a - low**a)) ** (1.0 / a)
    centre = rng.uniform(-0.1, 1.1, 2) * canvas
    angle = rng.uniform(0, 2 * np.pi)
    shape = SHAPES[rng.choice(len(SHAPES), p=recipe.shapes)]
    mask = np.zeros((canvas, canvas), np.uint8)
    point = tuple(int(v) for v in np.round(centre))
    if shape == "disc":
        cv2.circle(mask, point, max(1, int(radius)), 1, -1)
    elif shape == "ellipse":
        axes = (max(1, int(radius)), max(1, int(radius * rng.uniform(0.3, 0.8))))
        cv2.ellipse(mask, point, axes, np.degrees(angle), 0, 360, 1, -1)
    elif shape == "stroke":
        direction = np.array([np.cos(angle), np.sin(angle)]) * radius
        ends = [tuple(int(v) for v in np.round(centre + sign * direction)) for sign in (-1, 1)]
        cv2.line(mask, ends[0], ends[1], 1, max(1, int(radius * rng.uniform(0.15, 0.35))))
    else:
        corners = 4 if shape == "square" else 3
        turns = angle + np.arange(corners) * 2 * np.pi / corners
        polygon = centre + radius * np.stack([np.cos(turns), np.sin(turns)], axis=1)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


def _fill(rng: np.random.Generator, recipe: Recipe, xs: np.ndarray, ys: np.ndarray, canvas: int) -> np.ndarray:
    """What a leaf is painted with: one palette colour flat, striped with another, grained or graded."""
    colours = recipe.palette[rng.integers(len(recipe.palette), size=2)]
    first, second = _jittered(rng, colours[0]), _jittered(rng, colours[1])
    kind = FILLS[rng.choice(len(FILLS), p=recipe.fills)]
    if kind == "flat":
        return np.broadcast_to(first, (canvas, canvas, 3))
    if kind == "stripes":
        angle = recipe.stripe_angle + rng.normal(0.0, 0.2)
        u = xs * np.cos(angle) + ys * np.sin(angle)
        on = np.sin(2 * np.pi * u / (recipe.stripe_period * _SUPERSAMPLE) + rng.uniform(0, 2 * np.pi)) > 0
        return np.where(on[..., None], first, second)
    if kind == "grain":
        return first + rng.normal(0.0, 24.0, (canvas, canvas, 1)).astype(np.float32) * np.float32(1.0)
    ramp = (xs * np.cos(rng.uniform(0, 2 * np.pi)) + ys * np.sin(rng.uniform(0, 2 * np.pi))) / canvas
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    return first + ramp[..., None] * (second - first)
