"""Deterministic synthetic shapes: 1-4 objects with per-pixel masks and labels for several tasks, in two styles:
`textured` (gradient and striped backgrounds, coloured objects) and `sprites` (as dSprites: white objects on black,
the target larger, so that it spans several patches of a small ViT).

Written to disk in the VTAB-1k layout (masks beside the images), so demos and tests go through the real loaders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .manifests import Manifest, SplitEntry, write_manifest
from .registry import FGVC, FGVC_SPLITS, VTAB1K, VTAB_SPLITS
from .vtab1k import write_split_file

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 205, 40),
    "magenta": (200, 60, 200),
    "cyan": (40, 200, 215),
}
MAX_OBJECTS = 4
POSITION_BINS = 3  # the target's centre on a 3x3 grid
# task -> number of classes; every label describes the target object (the largest), except `count`
TASKS = {"shape": len(SHAPES), "colour": len(COLOURS), "position": POSITION_BINS**2, "count": MAX_OBJECTS}
TARGET_RADIUS = {"textured": (0.14, 0.22), "sprites": (0.24, 0.32)}  # circumradius, as a share of the image side
STYLES = tuple(TARGET_RADIUS)
DEFAULT_COUNTS = {"train800": 800, "val200": 200, "test": 500}
PREFIX = "synthetic_"  # the names of synthetic tasks: synthetic_<task>


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: shape, colour name, circumradius and centre in pixels, rotation in radians."""

    shape: str
    colour: str
    radius: float
    cx: float
    cy: float
    angle: float


@dataclass
class Scene:
    """One rendered image with its object mask (0 background, k for `objects[k - 1]`; 1 is the target) and labels."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8
    objects: list[ShapeObject]
    labels: dict[str, int]


def _shape_mask(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    dx, dy = xs - obj.cx, ys - obj.cy
    cos, sin = np.cos(obj.angle), np.sin(obj.angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated coordinates
    r = obj.radius
    if obj.shape == "circle":
        return u**2 + v**2 <= r**2
    if obj.shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.75
    if obj.shape == "triangle":  # equilateral: inside all three edges at distance r / 2 from the centre
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = np.pi / 2 + k * 2 * np.pi / 3
            inside &= np.cos(phi) * u + np.sin(phi) * v <= r / 2
        return inside
    rho, phi = np.hypot(u, v), np.arctan2(v, u)  # five-pointed star in polar form
    return rho <= r * (0.45 + 0.55 * np.abs(np.cos(2.5 * phi)) ** 3)


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    low, high = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 8) * 2 * np.pi / size
    gradient = (xs * np.cos(angle) + ys * np.sin(angle)) / (size * 1.5)
    stripes = 0.15 * np.sin(freq * (xs * np.sin(angle) - ys * np.cos(angle)))
    t = np.clip(gradient + stripes + 0.25, 0, 1)[..., None]
    noise = rng.normal(0, 6, (size, size, 3))
    return low * (1 - t) + high * t + noise


def _place(rng: np.random.Generator, size: int, radii: list[float]) -> list[tuple[float, float]]:
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(100):
            c = tuple(rng.uniform(r, size - r, 2))
            if all(np.hypot(c[0] - x, c[1] - y) > r + q + 1 for (x, y), q in zip(centres, radii, strict=False)):
                break
        centres.append(c)  # after 100 tries the last candidate is kept (rare, only overlaps a little)
    return centres


def render_scene(index: int, size: int = 64, seed: int = 0, style: str = "textured") -> Scene:
    """Render scene `index` of the stream `seed`; the same arguments give the same pixels on every platform.

    Args:
        index: scene number.
        size: image side in pixels.
        seed: stream seed.
        style: `textured` or `sprites` (white on black: the objects' colour names are drawn but not shown).
    """
    if style not in STYLES:
        raise ValueError(f"unknown scene style {style!r}; expected one of {', '.join(STYLES)}")
    rng = np.random.default_rng([seed, index])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    image = _background(rng, xs, ys, size) if style == "textured" else np.zeros((size, size, 3))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    target_r = rng.uniform(*TARGET_RADIUS[style]) * size
    radii = [target_r] + [target_r * rng.uniform(0.35, 0.6) for _ in range(count - 1)]
    names = list(COLOURS)
    objects = [
        ShapeObject(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=names[int(rng.integers(len(names)))],
            radius=float(r),
            cx=float(cx),
            cy=float(cy),
            angle=float(rng.uniform(0, 2 * np.pi)),
        )
        for r, (cx, cy) in zip(radii, _place(rng, size, radii), strict=True)
    ]
    mask = np.zeros((size, size), dtype=np.uint8)
    for k in range(count, 0, -1):  # the target (k = 1) last, so it stays whole
        inside = _shape_mask(objects[k - 1], xs, ys)
        colour = np.asarray(COLOURS[objects[k - 1].colour]) + rng.normal(0, 4, 3)
        image[inside] = colour if style == "textured" else 255.0
        mask[inside] = k
    target = objects[0]
    column = min(int(target.cx * POSITION_BINS / size), POSITION_BINS - 1)
    row = min(int(target.cy * POSITION_BINS / size), POSITION_BINS - 1)
    labels = {
        "shape": SHAPES.index(target.shape),
        "colour": names.index(target.colour),
        "position": row * POSITION_BINS + column,
        "count": count - 1,
    }
    return Scene(np.clip(image, 0, 255).astype(np.uint8), mask, objects, labels)


def task_name(task: str) -> str:
    """The folder (and manifest) name of a synthetic task, e.g. `synthetic_shape`."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    return f"{PREFIX}{task}"


def synthetic_kind(name: str) -> str | None:
    """The label task of a synthetic task's name (`synthetic_shape` -> `shape`), None for any other name."""
    kind = name.removeprefix(PREFIX)
    return kind if name.startswith(PREFIX) and kind in TASKS else None


def synthetic_manifest(
    task: str = "shape",
    counts: Mapping[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
    layout: str = VTAB1K,
    name: str | None = None,
    style: str = "textured",
) -> Manifest:
    """The manifest `write_synthetic` writes with these arguments, without writing anything (what a plan describes).

    Raises:
        ValueError: an unknown task or layout, or counts that are not non-negative numbers of train800, val200, test.
    """
    if layout not in (VTAB1K, FGVC):
        raise ValueError(f"unknown layout {layout!r}; expected {VTAB1K} or {FGVC}")
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    unknown = set(counts) - set(DEFAULT_COUNTS)
    if unknown or any(n < 0 for n in counts.values()):
        raise ValueError(f"counts should map train800, val200, test to non-negative numbers, got {dict(counts)}")
    if layout == VTAB1K:
        sizes = {**counts, "train800val200": counts["train800"] + counts["val200"]}
        entries = {s: SplitEntry(s, f"{s}.txt", sizes[s]) for s in VTAB_SPLITS}
    else:
        sizes = dict(zip(FGVC_SPLITS, (counts["train800"], counts["val200"], counts["test"]), strict=True))
        entries = {s: SplitEntry(s, f"{s}.json", sizes[s]) for s in FGVC_SPLITS}
    return Manifest(
        benchmark=layout,
        name=name or task_name(task),
        num_classes=TASKS[task],
        splits=entries,
        source={"generator": "wegeft_vision.data.synthetic", "task": task, "size": size, "seed": seed, "style": style},
    )


def write_synthetic(
    out: str | Path,
    task: str = "shape",
    counts: Mapping[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
    layout: str = VTAB1K,
    name: str | None = None,
    style: str = "textured",
) -> Path:
    """Write a synthetic task in the VTAB-1k (or FGVC) layout and return its folder `<out>/<name>/`.

    The folder holds `images/NNNNN.png`, `masks/NNNNN.png` (object ids as in `Scene.mask`), the split files,
    `scenes.json` (objects and labels of every task per image) and `manifest.yaml` (counts and classes, for
    `data check --manifest`). Images are PNG, so lossless. VTAB-1k layout: the four `.txt` split files
    (train800val200 = train800 + val200). FGVC layout: `train.json`, `val.json`, `test.json` (`{image: label}`) holding
    the train800, val200 and test scenes, images relative to the folder itself (the dataset root).

    Args:
        out: parent folder (the VTAB-1k root).
        task: which label the split files carry: `shape`, `colour`, `position` or `count`.
        counts: scenes per split, keys `train800`, `val200`, `test` (default 800, 200, 500).
        size: image side in pixels.
        seed: stream seed; scene numbers run on across splits.
        layout: `vtab-1k` or `fgvc`.
        name: the folder's (and task's) name; default `synthetic_<task>`.
        style: `textured` or `sprites` (see `render_scene`; its objects show no colour, so no `colour` task).
    """
    if style == "sprites" and task == "colour":
        raise ValueError("sprites scenes are white on black: their colour task has nothing to see")
    manifest = synthetic_manifest(task, counts, size, seed, layout, name, style)  # checks the arguments
    counts, name = {**DEFAULT_COUNTS, **(counts or {})}, manifest.name
    folder = Path(out) / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[tuple[str, int]]] = {}
    scenes = {}
    index = 0
    for split in ("train800", "val200", "test"):
        splits[split] = []
        for _ in range(counts[split]):
            scene = render_scene(index, size, seed, style)
            rel = f"images/{index:05d}.png"
            Image.fromarray(scene.image).save(folder / rel, compress_level=1)
            Image.fromarray(scene.mask).save(folder / f"masks/{index:05d}.png", compress_level=1)
            scenes[rel] = {"labels": scene.labels, "objects": [asdict(o) for o in scene.objects]}
            splits[split].append((rel, scene.labels[task]))
            index += 1
    (folder / "scenes.json").write_text(json.dumps(scenes))
    if layout == VTAB1K:
        splits["train800val200"] = splits["train800"] + splits["val200"]
        for split, samples in splits.items():
            write_split_file(folder / f"{split}.txt", samples)
    else:
        splits = dict(zip(FGVC_SPLITS, splits.values(), strict=True))
        for split, samples in splits.items():
            (folder / f"{split}.json").write_text(json.dumps(dict(samples), indent=0))
    write_manifest(manifest, folder / "manifest.yaml", header=f"synthetic shapes, task {task}")
    return folder


def read_mask(folder: str | Path, rel_image: str) -> np.ndarray:
    """The object mask of an image written by `write_synthetic` (`images/X.png` -> `masks/X.png`)."""
    path = Path(folder) / "masks" / Path(rel_image).name
    if not path.is_file():
        raise FileNotFoundError(f"missing mask {path} for image {rel_image}")
    return np.asarray(Image.open(path))
