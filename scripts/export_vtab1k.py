"""Export VTAB-1k tasks from tensorflow-datasets to the folder layout `<out>/<task>/{train800,val200,...}.txt`.

Images are written losslessly as PNG (`images/<split>/NNNNNN.png`; train800val200 lists the train800 and val200 files).
Each task's tfds builder, label and slices come from its manifest in `data_splits/vtab1k_<task>.yaml`
(`source.tfds`, `source.label`, `source.slices`), following the task_adaptation code of Zhai et al. (2019):

    task                  tfds builder                        train800       val200               test
    cifar                 cifar100:3.*.*                      train[:800]    train[45000:45200]   test
    caltech101            caltech101:3.*.*                    train[:800]    train[2754:2954]     test
    dtd                   dtd:3.*.*                           train[:800]    validation[:200]     test
    oxford_flowers102     oxford_flowers102:2.*.*             train[:800]    validation[:200]     test
    oxford_iiit_pet       oxford_iiit_pet:3.*.*               train[:800]    train[2944:3144]     test
    svhn                  svhn_cropped:3.*.*                  train[:800]    train[65931:66131]   test
    sun397                sun397/tfds:4.*.*                   train[:800]    validation[:200]     test
    patch_camelyon        patch_camelyon:2.*.*                train[:800]    validation[:200]     test
    eurosat               eurosat/rgb:2.*.*                   train[:800]    train[16200:16400]   train[21600:]
    resisc45              resisc45:3.*.*                      train[:800]    train[18900:19100]   train[25200:]
    diabetic_retinopathy  diabetic_retinopathy_detection/
                          btgraham-300:3.*.*                  train[:800]    validation[:200]     test
    clevr_count/_dist     clevr:3.*.*                         train[:800]    train[63000:63200]   validation
    dmlab                 dmlab:2.0.*                         train[:800]    validation[:200]     test
    kitti                 kitti:3.*.*                         train[:800]    validation[:200]     test
    dsprites_loc/_ori     dsprites:2.*.*                      train[:800]    train[589824:590024] train[663552:]
    smallnorb_azi/_ele    smallnorb:2.*.*                     train[:800]    test[:200]           test[12150:]

Labels other than tfds's `label` (see `LABELS`): clevr_count = objects - 3; clevr_dist = bin of the nearest object's
depth over 0, 8, 8.5, 9, 9.5, 10, 100; kitti = bin of the nearest Car/Van/Truck depth over -100, 8, 20, 999 (1000 if
none); dsprites_loc = x position // 2 (32 -> 16); dsprites_ori = floor(orientation / 2.5) (40 -> 16); smallnorb
azimuth (18) and elevation (9). Grey images (dsprites, smallnorb) are tiled to RGB; dsprites' 0/1 pixels scaled to 255.

Needs the optional extra: `pip install -e ".[tfds]"` and the tfds data (downloaded or prepared in `--data-dir`).

    python scripts/export_vtab1k.py --task cifar --task dtd --out data/vtab-1k --data-dir ~/tensorflow_datasets
    wegeft-vision data check vtab-1k/cifar --root data/vtab-1k
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wegeft_vision.data import VTAB_TASKS, load_manifest, write_split_file

Example = Mapping[str, Any]
WRITTEN_SPLITS = ("train800", "val200", "test")


def _bin(value: float, thresholds: list[float]) -> int:
    """Index of the last threshold below `value` (task_adaptation's binning)."""
    return int(np.max(np.where(np.asarray(thresholds) - value < 0)[0]))


def _kitti_dist(x: Example) -> int:
    vehicles = np.asarray(x["objects"]["type"]) < 3  # Car, Van, Truck
    depths = np.concatenate([np.asarray(x["objects"]["location"])[vehicles, 2], [1000.0]])
    return _bin(float(depths.min()), [-100.0, 8.0, 20.0, 999.0])


LABELS: dict[str, Callable[[Example], int]] = {
    "label": lambda x: int(x["label"]),
    "clevr_count": lambda x: len(x["objects"]["size"]) - 3,
    "clevr_dist": lambda x: _bin(
        float(np.min(np.asarray(x["objects"]["pixel_coords"])[:, 2])), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]
    ),  # fmt: skip
    "kitti_dist": _kitti_dist,
    "dsprites_loc": lambda x: int(x["label_x_position"]) // 2,
    "dsprites_ori": lambda x: int(np.floor(int(x["label_orientation"]) / 2.5)),
    "label_azimuth": lambda x: int(x["label_azimuth"]),
    "label_elevation": lambda x: int(x["label_elevation"]),
}


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """`(H, W, 3)` uint8 from an image array: grey `(H, W)` or `(H, W, 1)` is tiled to three channels."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return image


def write_task(out: str | Path, task: str, splits: Mapping[str, Iterable[tuple[np.ndarray, int]]]) -> Path:
    """Write one task's splits as PNG files plus the four split files and return the task folder.

    Args:
        out: the VTAB-1k root.
        task: the folder name (canonical task name).
        splits: `train800`, `val200` and `test`, each an iterable of `(image, label)`; train800val200 is derived.
    """
    missing = [s for s in WRITTEN_SPLITS if s not in splits]
    if missing:
        raise ValueError(f"splits of {task} lack {', '.join(missing)}; expected {', '.join(WRITTEN_SPLITS)}")
    folder = Path(out) / task
    lines: dict[str, list[tuple[str, int]]] = {}
    for split in WRITTEN_SPLITS:
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for index, (image, label) in enumerate(splits[split]):
            rel = f"images/{split}/{index:06d}.png"
            Image.fromarray(to_rgb_uint8(image)).save(folder / rel)  # PNG: lossless
            lines[split].append((rel, int(label)))
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, samples in lines.items():
        write_split_file(folder / f"{split}.txt", samples)
    return folder


def tfds_source(task: str, data_dir: str | None = None) -> dict[str, Iterator[tuple[np.ndarray, int]]]:
    """The task's VTAB-1k slices read from tensorflow-datasets (imported here: an optional dependency)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError('the exporter needs tensorflow-datasets: pip install -e ".[tfds]"') from err
    source = load_manifest(f"vtab-1k/{task}").source
    label = LABELS[source["label"]]
    scale = 255 if task.startswith("dsprites") else 1  # dsprites stores 0/1 pixels

    def read(split: str) -> Iterator[tuple[np.ndarray, int]]:
        dataset = tfds.load(source["tfds"], split=source["slices"][split], data_dir=data_dir, shuffle_files=False)
        for example in tfds.as_numpy(dataset):
            yield example["image"] * np.uint8(scale), label(example)

    return {split: read(split) for split in WRITTEN_SPLITS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, help="task name or alias (repeatable), or 'all'")
    parser.add_argument("--out", type=Path, required=True, help="VTAB-1k root to write into")
    parser.add_argument("--data-dir", help="tensorflow-datasets data folder")
    args = parser.parse_args(argv)
    tasks = list(VTAB_TASKS) if args.task == ["all"] else [load_manifest(f"vtab-1k/{t}").name for t in args.task]
    for task in tasks:
        folder = write_task(args.out, task, tfds_source(task, args.data_dir))
        print(f"wrote {folder}; verify with: wegeft-vision data check vtab-1k/{task} --root {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
