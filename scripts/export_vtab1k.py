"""Export VTAB-1k tasks from tensorflow-datasets to the folder layout `<out>/<task>/{train800,val200,...}.txt`.

Images are written losslessly as PNG (`images/<split>/NNNNNN.png`; train800val200 lists the train800 and val200 files).
Each task's tfds builder and version pin, label and slices come from its manifest in `data_splits/vtab1k_<task>.yaml`
(`source.tfds` as `name:version`, `source.label`, `source.slices`). The pins are the authors' (savadikarc/gift,
`visual_recognition/scripts/vtab/download_vtab.py`; the slices as in VPT's `src/data/vtab_datasets/*.py`, after the
task_adaptation code of Zhai et al., 2019): a major version for most, exact for kitti and dmlab.

    task                  tfds builder:version pin            train800       val200               test
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
    dmlab                 dmlab:2.0.1                         train[:800]    validation[:200]     test
    kitti                 kitti:3.2.0                         train[:800]    validation[:200]     test
    dsprites_loc/_ori     dsprites:2.*.*                      train[:800]    train[589824:590024] train[663552:]
    smallnorb_azi/_ele    smallnorb:2.*.*                     train[:800]    test[:200]           test[12150:]

A task whose pin the installed tensorflow-datasets cannot provide is refused, naming the task, the pin and the version
installed (the same data prepared at another version may differ); `--allow-other-version` exports the installed version
instead. Each task folder gets a `manifest.yaml`: the bundled manifest's classes and source plus the tfds builder name,
the pin, the version resolved and the tensorflow-datasets release, with the written counts and split-file sha256.

Labels other than tfds's `label` (see `LABELS`): clevr_count = objects - 3; clevr_dist = bin of the nearest object's
depth over 0, 8, 8.5, 9, 9.5, 10, 100; kitti = bin of the nearest Car/Van/Truck depth over -100, 8, 20, 999 (1000 if
none); dsprites_loc = x position // 2 (32 -> 16); dsprites_ori = floor(orientation / 2.5) (40 -> 16); smallnorb
azimuth (18) and elevation (9). Grey images (dsprites, smallnorb) are tiled to RGB; dsprites' 0/1 pixels scaled to 255.

Needs the optional extra: `pip install -e ".[tfds]"` and the tfds data (downloaded or prepared in `--data-dir`).

    python scripts/export_vtab1k.py --task cifar --task dtd --out data/vtab-1k --data-dir ~/tensorflow_datasets
    wegeft-vision data check vtab-1k/cifar --root data/vtab-1k --manifest data/vtab-1k/cifar/manifest.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from wegeft_vision.data import (
    VTAB_TASKS,
    SplitEntry,
    load_manifest,
    read_split_file,
    sha256_of,
    write_manifest,
    write_split_file,
)

Example = Mapping[str, Any]
WRITTEN_SPLITS = ("train800", "val200", "test")
MANIFEST_FILE = "manifest.yaml"


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


class TFDSPin(NamedTuple):
    """How the authors load a task from tensorflow-datasets (read from its bundled manifest's `source`).

    Attributes:
        task: the canonical task name.
        name: the tfds builder, with its config if any (`diabetic_retinopathy_detection/btgraham-300`).
        pin: the version pin, `MAJOR.MINOR.PATCH` where `*` matches any number (`3.*.*`, `3.2.0`).
        label: the key of `LABELS` that makes the task's label.
        slices: the tfds split string of each written split (`train[:800]`, ...).
    """

    task: str
    name: str
    pin: str
    label: str
    slices: dict[str, str]

    @property
    def spec(self) -> str:
        """`name:pin`, as `tfds.builder` takes it."""
        return f"{self.name}:{self.pin}"


class VersionRefused(RuntimeError):
    """The installed tensorflow-datasets cannot provide a task's pinned version."""


def tfds_pin(task: str) -> TFDSPin:
    """The tfds builder, version pin, label and slices of a VTAB-1k task (canonical name or alias).

    Raises:
        ValueError: a manifest whose `source.tfds` is not `name:MAJOR.MINOR.PATCH` (each part a number or `*`).
    """
    manifest = load_manifest(f"vtab-1k/{task}")
    spec = str(manifest.source.get("tfds", ""))
    name, _, pin = spec.rpartition(":")
    parts = pin.split(".")
    if not name or len(parts) != 3 or not all(p == "*" or p.isdigit() for p in parts):
        raise ValueError(f"{manifest.path}: source.tfds {spec!r} should read name:MAJOR.MINOR.PATCH (numbers or *)")
    slices = manifest.source["slices"]
    return TFDSPin(manifest.name, name, pin, manifest.source["label"], {s: slices[s] for s in WRITTEN_SPLITS})


def version_matches(version: str, pin: str) -> bool:
    """Whether a version such as `3.0.2` satisfies a pin such as `3.*.*` (each part equal, or `*`)."""
    found, wanted = str(version).split("."), pin.split(".")
    return len(found) == len(wanted) and all(w in ("*", f) for f, w in zip(found, wanted, strict=True))


def _installed(tfds: Any, name: str, data_dir: str | None) -> str:
    """`name` and the version the installed tensorflow-datasets gives when none is asked for, or `no <name>`."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # tfds raises various types for an unknown or unbuildable dataset
        return f"no {name}"
    versions = [str(v) for v in getattr(builder, "versions", None) or ()]
    listed = f" (versions it can build: {', '.join(versions)})" if versions else ""
    return f"{name} {builder.info.version}{listed}"


class Resolved(NamedTuple):
    """A task's tfds builder at the version resolved for its pin."""

    pin: TFDSPin
    builder: Any
    version: str

    def provenance(self, tfds: Any) -> dict[str, Any]:
        """What the task's `manifest.yaml` records besides the bundled source."""
        return {
            "tfds_name": self.pin.name,
            "tfds_pin": self.pin.pin,
            "tfds_version": self.version,
            "tfds_pin_met": version_matches(self.version, self.pin.pin),
            "tensorflow_datasets": str(getattr(tfds, "__version__", "?")),
        }


def import_tfds() -> Any:
    """The `tensorflow_datasets` module (an optional dependency)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError('the exporter needs tensorflow-datasets: pip install -e ".[tfds]"') from err
    return tfds


def resolve(tfds: Any, task: str, data_dir: str | None = None, allow_other_version: bool = False) -> Resolved:
    """The tfds builder of a task at the authors' pinned version, and the exact version resolved.

    Args:
        tfds: the `tensorflow_datasets` module.
        task: canonical task name or alias.
        data_dir: tensorflow-datasets data folder.
        allow_other_version: when the pin cannot be met, build the installed version instead of refusing.

    Raises:
        VersionRefused: the pin cannot be met (and `allow_other_version` is not set); the message names the task,
            the pin and the installed version.
    """
    pin = tfds_pin(task)
    try:
        builder = tfds.builder(pin.spec, data_dir=data_dir)
        version = str(builder.info.version)
        failure = None if version_matches(version, pin.pin) else f"it resolved {version}"
    except Exception as err:  # tfds raises AssertionError, ValueError or its own errors for a missing version
        failure = f"{type(err).__name__}: {err}"
    if failure is None:
        return Resolved(pin, builder, version)
    if not allow_other_version:
        raise VersionRefused(
            f"{pin.task}: the authors load {pin.name} at version {pin.pin} ({pin.spec}), but the installed "
            f"tensorflow-datasets {getattr(tfds, '__version__', '?')} provides {_installed(tfds, pin.name, data_dir)} "
            f"({failure}); install a tensorflow-datasets release that builds {pin.name} {pin.pin} or prepare it in "
            f"--data-dir, or pass --allow-other-version to export the installed version (recorded in the task's "
            f"{MANIFEST_FILE})"
        )
    try:
        builder = tfds.builder(pin.name, data_dir=data_dir)
    except Exception as err:
        raise VersionRefused(f"{pin.task}: tensorflow-datasets builds no version of {pin.name} ({failure})") from err
    return Resolved(pin, builder, str(builder.info.version))


def read_splits(tfds: Any, resolved: Resolved) -> dict[str, Iterator[tuple[np.ndarray, int]]]:
    """The task's VTAB-1k slices as `(image, label)` streams; prepares the data first (a no-op once it is prepared
    in the data folder, as `tfds.load` does)."""
    resolved.builder.download_and_prepare()
    label = LABELS[resolved.pin.label]
    scale = 255 if resolved.pin.task.startswith("dsprites") else 1  # dsprites stores 0/1 pixels

    def read(split: str) -> Iterator[tuple[np.ndarray, int]]:
        dataset = resolved.builder.as_dataset(split=resolved.pin.slices[split], shuffle_files=False)
        for example in tfds.as_numpy(dataset):
            yield example["image"] * np.uint8(scale), label(example)

    return {split: read(split) for split in WRITTEN_SPLITS}


def write_export_manifest(folder: str | Path, task: str, provenance: Mapping[str, Any]) -> Path:
    """`<folder>/manifest.yaml`: the bundled manifest of `task` with the written counts and split-file sha256, and
    its source extended by `provenance` (tfds builder name, pin, version resolved)."""
    folder = Path(folder)
    bundled = load_manifest(f"vtab-1k/{task}")
    splits = {
        name: SplitEntry(name, e.file, len(read_split_file(folder / e.file)), sha256=sha256_of(folder / e.file))
        for name, e in bundled.splits.items()
    }
    source = {**bundled.source, **provenance, "exported_by": "scripts/export_vtab1k.py"}
    header = f"VTAB-1k {bundled.name} from tensorflow-datasets {provenance['tfds_name']} {provenance['tfds_version']}"
    return write_manifest(replace(bundled, splits=splits, source=source, path=None), folder / MANIFEST_FILE, header)


def export_task(out: str | Path, tfds: Any, resolved: Resolved) -> Path:
    """Write one resolved task (images, split files, `manifest.yaml`) and return its folder."""
    folder = write_task(out, resolved.pin.task, read_splits(tfds, resolved))
    write_export_manifest(folder, resolved.pin.task, resolved.provenance(tfds))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, help="task name or alias (repeatable), or 'all'")
    parser.add_argument("--out", type=Path, required=True, help="VTAB-1k root to write into")
    parser.add_argument("--data-dir", help="tensorflow-datasets data folder")
    parser.add_argument(
        "--allow-other-version",
        action="store_true",
        help="export the installed tfds version when the authors' pin cannot be met (recorded in manifest.yaml)",
    )
    args = parser.parse_args(argv)
    tasks = list(VTAB_TASKS) if args.task == ["all"] else [load_manifest(f"vtab-1k/{t}").name for t in args.task]
    try:
        tfds = import_tfds()
    except ImportError as err:
        print(f"export_vtab1k: {err}", file=sys.stderr)
        return 2
    resolved, refused = [], []
    for task in tasks:  # every pin checked before anything is downloaded or written
        try:
            resolved.append(resolve(tfds, task, args.data_dir, args.allow_other_version))
        except VersionRefused as err:
            refused.append(str(err))
    if refused:
        print("\n".join(f"export_vtab1k: {message}" for message in refused), file=sys.stderr)
        return 2
    for task in resolved:
        folder = export_task(args.out, tfds, task)
        print(
            f"wrote {folder} ({task.pin.name} {task.version}); verify with: wegeft-vision data check "
            f"vtab-1k/{task.pin.task} --root {args.out} --manifest {folder / MANIFEST_FILE}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
