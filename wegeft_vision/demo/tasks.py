"""The demo's downstream tasks, one in the spirit of each VTAB-1k group, written as task folders of one's own.

- `photo_crops_48` (natural): which of 9 regions of three colour photographs shipped inside scikit-learn and
  matplotlib a 48-px crop comes from (`demo.photos`), 800 / 200 / 800;
- `textures` (specialized): procedural textures of 8 kinds (stripes, checks, dots, grid, waves, rings, zigzag,
  blobs) with random period, orientation, colours, blur and noise;
- `shapes_position` (structured): synthetic sprites with object masks (`data.synthetic`, style `sprites`: 1-4 white
  shapes on black, as dSprites draws them), labelled by the largest object's cell on a 3x3 grid.

Each goes through the same path as a user's own folder (VTAB-1k layout, `data.folders.open_folder` writes its
manifest with the VTAB-1k group); none of them is the mini-ViT's source task (procedural dead leaves and glyphs).
`digits` (scikit-learn's 1,797 real handwritten scans) is written by `write_digits` for `scripts/eval_transfer.py`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data.folders import MANIFEST_FILE
from ..data.synthetic import write_synthetic
from .photos import write_photo_crops
from .task_folder import SIZES, describe_folder, write_splits

TEXTURES = ("stripes", "checks", "dots", "grid", "waves", "rings", "zigzag", "blobs")
TEXTURE_SIZE = 32
TEXTURE_TEST = 800
SHAPES_SIZE = 64
SHAPES_TEST = 500


def write_digits(out: str | Path, seed: int = 0) -> Path:
    """`<out>/digits`: scikit-learn's handwritten digits as 8x8 grey PNGs (values 0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits  # the data ship inside scikit-learn: no download

    digits = load_digits()
    folder = Path(out) / "digits"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(digits.target))
    samples = []
    for index in order:
        rel = f"images/{index:04d}.png"
        pixels = np.round(digits.images[index] * 255.0 / 16.0).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / rel)
        samples.append((rel, int(digits.target[index])))
    write_splits(folder, samples, len(samples) - 1000)
    describe_folder(folder, "natural", {"generator": "sklearn.datasets.load_digits", "order_seed": seed})
    return folder


def _wave(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, period: float) -> np.ndarray:
    """A texture in [0, 1] over rotated pixel coordinates (u, v)."""
    f = 2 * np.pi / period
    if kind == "stripes":
        return 0.5 + 0.5 * np.tanh(3 * np.sin(f * u))
    if kind == "checks":
        return 0.5 + 0.5 * np.tanh(3 * np.sin(f * u) * np.sin(f * v))
    if kind == "dots":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (np.hypot(du, dv) < period * rng.uniform(0.2, 0.35)).astype(float)
    if kind == "grid":
        width = rng.uniform(1.0, 1.8)
        return ((u % period < width) | (v % period < width)).astype(float)
    if kind == "waves":
        return 0.5 + 0.5 * np.tanh(3 * np.sin(f * u + rng.uniform(1.0, 2.5) * np.sin(f * 0.5 * v)))
    if kind == "rings":
        r = np.hypot(u - rng.uniform(-12, 12), v - rng.uniform(-12, 12))
        return 0.5 + 0.5 * np.tanh(3 * np.sin(f * r))
    if kind == "zigzag":
        tri = np.abs((v / period) % 2 - 1) * period
        return 0.5 + 0.5 * np.tanh(3 * np.sin(f * (u + tri)))
    noise = rng.normal(0, 1, (TEXTURE_SIZE // 4 + 2, TEXTURE_SIZE // 4 + 2))  # blobs: smooth noise, thresholded
    field = cv2.resize(noise, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_CUBIC)
    return (field > rng.uniform(-0.3, 0.3)).astype(float)


def render_texture(label: int, rng: np.random.Generator) -> np.ndarray:
    """One (32, 32, 3) uint8 texture of class `label` (see `TEXTURES`)."""
    ys, xs = np.mgrid[0:TEXTURE_SIZE, 0:TEXTURE_SIZE].astype(float) - TEXTURE_SIZE / 2
    angle = rng.uniform(0, np.pi)
    u, v = xs * np.cos(angle) + ys * np.sin(angle), -xs * np.sin(angle) + ys * np.cos(angle)
    u, v = u + rng.uniform(0, 16), v + rng.uniform(0, 16)
    pattern = _wave(TEXTURES[label], u, v, rng, rng.uniform(4.0, 10.0))
    while True:
        low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if np.abs(low - high).max() >= 60:
            break
    image = low + pattern[..., None] * (high - low)
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = image + rng.normal(0, rng.uniform(0, 12), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_textures(out: str | Path, seed: int = 0, test: int = TEXTURE_TEST) -> Path:
    """`<out>/textures`: procedural textures of the 8 `TEXTURES` kinds, classes balanced in every split."""
    folder = Path(out) / "textures"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(sum(SIZES.values()) + test):
        rng = np.random.default_rng([seed, index])
        label = index % len(TEXTURES)
        rel = f"images/{index:05d}.png"
        Image.fromarray(render_texture(label, rng)).save(folder / rel, compress_level=1)
        samples.append((rel, label))
    write_splits(folder, samples, test)
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in TEXTURES))
    describe_folder(folder, "specialized", {"generator": "wegeft_vision.demo.tasks.render_texture", "seed": seed})
    return folder


def write_shapes(out: str | Path, seed: int = 0, test: int = SHAPES_TEST) -> Path:
    """`<out>/shapes_position`: synthetic sprites (64 px, masks in `masks/`), labelled by the target's 3x3 cell."""
    counts = {"train800": SIZES["train800"], "val200": SIZES["val200"], "test": test}
    folder = write_synthetic(
        out, "position", counts, size=SHAPES_SIZE, seed=seed, name="shapes_position", style="sprites"
    )
    (folder / MANIFEST_FILE).unlink()  # the synthetic writer's own; the folder is described like a user's
    (folder / "classes.txt").write_text("".join(f"row {r} col {c}\n" for r in range(3) for c in range(3)))
    source = {"generator": "wegeft_vision.data.synthetic", "task": "position", "style": "sprites", "seed": seed}
    describe_folder(folder, "structured", source)
    return folder


def write_photos(out: str | Path) -> Path:
    """`<out>/photo_crops_48`: which of 9 regions of three colour photographs a 48-px crop comes from
    (`demo.photos.write_photo_crops`)."""
    return write_photo_crops(out, side=48)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "photo_crops_48": write_photos,
    "textures": write_textures,
    "shapes_position": write_shapes,
}


def write_tasks(out: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write the demo's tasks (all, or `names`) under `out`, each replacing an earlier copy; their folders."""
    folders = []
    for name in names or list(WRITERS):
        if name not in WRITERS:
            raise ValueError(f"unknown demo task {name!r}; expected one of {', '.join(WRITERS)}")
        shutil.rmtree(Path(out) / name, ignore_errors=True)
        folders.append(WRITERS[name](Path(out)))
    return folders
