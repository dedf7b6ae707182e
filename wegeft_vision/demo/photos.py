"""Tasks cut from the colour photographs that ship inside installed packages (scikit-learn's `china.jpg` and
`flower.jpg`, matplotlib's `grace_hopper.jpg`), written as task folders of one's own (VTAB-1k layout, 32 px).

They measure how a backbone transfers to natural photographs it never saw: no pretraining source of this project
may use them (`scripts/pretrain_mini_vit.py` draws procedural images only).

- `photo_crops_<side>`: which of 9 regions (each photograph cut into 3 vertical strips) a crop of `side` pixels
  comes from, the crop scaled to 32 px: colour, texture and content at one scale;
- `photo_patches`: 8 kinds of 12-px patch, by the k-means clusters of their colour (CIELAB mean) and texture
  (luminance spread and gradient energy) over all three photographs: low-level statistics alone.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .task_folder import describe_folder, write_splits

SIDE = 32  # the images' side, the mini-ViT's input size
COUNTS = {"train800": 800, "val200": 200, "test": 800}
STRIPS = 3
CROP_SIDES = (24, 48, 96)
PATCH_SIDE, PATCH_KINDS = 12, 8


def photographs() -> dict[str, np.ndarray]:
    """The photographs as (H, W, 3) uint8 RGB arrays, by name."""
    import matplotlib.cbook
    import sklearn.datasets

    images = dict(zip(("china", "flower"), sklearn.datasets.load_sample_images().images, strict=True))
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as hopper:
        images["hopper"] = np.asarray(hopper.convert("RGB"))
    return images


def _crop(photo: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    return cv2.resize(photo[top : top + side, left : left + side], (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def _write(folder: Path, samples: dict[str, list[tuple[np.ndarray, int]]], classes: list[str], source: dict) -> Path:
    """Images in split order (train800, val200, test) and their split files, `classes.txt`, then the manifest."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    listed = []
    for pixels, label in (item for split in COUNTS for item in samples[split]):
        rel = f"images/{len(listed):05d}.png"
        Image.fromarray(pixels).save(folder / rel, compress_level=1)
        listed.append((rel, label))
    write_splits(folder, listed, COUNTS["test"])
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    describe_folder(folder, "natural", source)
    return folder


def write_photo_crops(out: str | Path, side: int = 48, seed: int = 0) -> Path:
    """`<out>/photo_crops_<side>`: crops of `side` pixels from 9 regions (3 strips of each photograph), classes
    balanced in every split, positions drawn uniformly inside the region (each split from its own stream)."""
    regions = [
        (name, photo[:, i * photo.shape[1] // STRIPS : (i + 1) * photo.shape[1] // STRIPS])
        for name, photo in photographs().items()
        for i in range(STRIPS)
    ]
    if side > min(min(region.shape[:2]) for _, region in regions):
        raise ValueError(f"crop side {side} does not fit in the photographs' strips")
    samples: dict[str, list[tuple[np.ndarray, int]]] = {}
    for stream, (split, count) in enumerate(COUNTS.items()):
        rng = np.random.default_rng([seed, stream, side])
        samples[split] = []
        for index in range(count):
            label = index % len(regions)
            region = regions[label][1]
            top, left = rng.integers(0, region.shape[0] - side + 1), rng.integers(0, region.shape[1] - side + 1)
            samples[split].append((_crop(region, top, left, side), label))
    classes = [f"{name} strip {i + 1}" for name in photographs() for i in range(STRIPS)]
    source = {"generator": "wegeft_vision.demo.photos.write_photo_crops", "side": side, "seed": seed}
    return _write(Path(out) / f"photo_crops_{side}", samples, classes, source)


def _statistics(patch: np.ndarray) -> np.ndarray:
    """Colour (CIELAB mean) and texture (luminance spread, gradient energy) of an RGB uint8 patch."""
    lab = cv2.cvtColor(patch, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY).astype(np.float64)
    gradient = np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1]).mean()
    return np.array([*lab.mean(0), lab[:, 0].std(), gradient])


def write_photo_patches(out: str | Path, seed: int = 0, pool: int = 12000) -> Path:
    """`<out>/photo_patches`: 12-px patches labelled by their k-means cluster (8) of colour and texture statistics
    (standardized), fitted on a pool of patches from all photographs; classes balanced in every split."""
    from sklearn.cluster import KMeans

    photos = list(photographs().values())
    rng = np.random.default_rng([seed, 1])
    patches = []
    for index in range(pool):
        photo = photos[index % len(photos)]
        top = rng.integers(0, photo.shape[0] - PATCH_SIDE + 1)
        left = rng.integers(0, photo.shape[1] - PATCH_SIDE + 1)
        patches.append(photo[top : top + PATCH_SIDE, left : left + PATCH_SIDE])
    stats = np.stack([_statistics(patch) for patch in patches])
    stats = (stats - stats.mean(0)) / stats.std(0)
    labels = KMeans(PATCH_KINDS, n_init=4, random_state=seed).fit_predict(stats)
    by_kind = [rng.permutation(np.flatnonzero(labels == kind)).tolist() for kind in range(PATCH_KINDS)]
    per_kind = {split: count // PATCH_KINDS for split, count in COUNTS.items()}
    if min(map(len, by_kind)) < sum(per_kind.values()):
        raise ValueError(f"the pool of {pool} patches leaves a kind with {min(map(len, by_kind))} patches")
    samples: dict[str, list[tuple[np.ndarray, int]]] = {}
    for split, count in per_kind.items():
        picked = [(by_kind[kind].pop(), kind) for _ in range(count) for kind in range(PATCH_KINDS)]
        samples[split] = [(cv2.resize(patches[i], (SIDE, SIDE), interpolation=cv2.INTER_CUBIC), k) for i, k in picked]
    classes = [f"kind {kind}" for kind in range(PATCH_KINDS)]
    source = {"generator": "wegeft_vision.demo.photos.write_photo_patches", "seed": seed, "pool": pool}
    return _write(Path(out) / "photo_patches", samples, classes, source)
