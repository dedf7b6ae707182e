"""LightningDataModule for the protocol's stages: search (train -> val) and final (train+val -> test)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ..backbones import DEFAULT_BACKBONE
from ..backbones import data_config as backbone_data_config
from .cache import CachedDataset, DecodedCache
from .images import ImageListDataset
from .manifests import Manifest
from .tasks import Task, open_task
from .transforms import Preprocessing, preprocessing

Samples = list[tuple[Path, int]]


class EpochShuffle(RandomSampler):
    """A random order that depends only on (seed, epoch): resuming at epoch k replays the order of epoch k.

    Lightning calls `set_epoch` at the start of every training epoch (a `RandomSampler`, so Lightning's distributed
    sampler keeps shuffling under DDP).
    """

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=order).tolist()


class EpochBatches(BatchSampler):
    """Batches of an `EpochShuffle` (cached splits are read a batch at a time); forwards `set_epoch`."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's RNGs of a DataLoader worker from its torch seed (set by the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class BenchmarkDataModule(L.LightningDataModule):
    """VTAB-1k or FGVC data for one protocol stage.

    search: VTAB-1k train800 -> val200, FGVC train -> val. final: VTAB-1k train800val200 -> test, FGVC train -> test,
    or train+val -> test with `final_includes_val=True` (the paper's text says train+val; the authors' code trains
    the final FGVC run on train only, which is the default). `val_dataloader` and `test_dataloader` both serve the
    stage's evaluation split.

    Splits served from the cache come out of their loaders as uint8 batches; `on_after_batch_transfer` (called by
    Lightning once a batch is on the training device) normalizes them there. Outside Lightning, call it yourself.

    Args:
        dataset: `vtab-1k/<task>` or `fgvc/<dataset>` (aliases accepted; a custom name needs `manifest`), or the path
            of a folder of one's own (VTAB-1k or ImageFolder layout, see `data.folders`).
        root: VTAB-1k: the folder of task folders; FGVC: the dataset's root folder; unused for a folder path.
        stage: `search` or `final`.
        splits_dir: FGVC: folder of the JSON split files (default: `root`).
        manifest: manifest file to use instead of the bundled one (expected counts and classes).
        backbone: timm `architecture.tag` whose pretrained data config sets size, mean, std, interpolation.
        data_config: a timm data config to use instead (e.g. `backbones.data_config(model)`).
        preset: preprocessing preset (`data.transforms.PRESETS`): `paper`, `vpt`, `authors_vtab`, `authors_fgvc`, or
            `authors`, the authors' pipeline of this data: `authors_fgvc` on FGVC, `authors_vtab` on VTAB-1k and on
            folders of one's own (either layout). `preprocessing.preset` and the results hold the resolved name.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (default: `batch_size`).
        num_workers: DataLoader workers for decoding (unused for cached splits).
        pin_memory: pin host memory of decoded batches (cached batches are uint8 and small; they are not pinned).
        seed: seed of the training order and of worker RNGs.
        final_includes_val: FGVC final stage trains on train+val.
        allow_count_mismatch: accept split sizes that differ from the manifest.
        cache_dir: decoded-tensor cache folder; splits whose geometry is uint8 and not random are served from it
            (`authors_fgvc` eval; not its augmented training split, nor `authors_vtab`, whose resize gives floats).
        cache_device: hold cached splits on this device (e.g. `cuda`), so batches cost one gather.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        dataset: str,
        root: str | Path | None = None,
        stage: str = "search",
        splits_dir: str | Path | None = None,
        manifest: str | Path | None = None,
        backbone: str = DEFAULT_BACKBONE,
        data_config: Mapping[str, Any] | None = None,
        preset: str = "paper",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int = 0,
        final_includes_val: bool = False,
        allow_count_mismatch: bool = False,
        cache_dir: str | Path | None = None,
        cache_device: str | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task: Task = open_task(dataset, root, splits_dir, manifest)
        self.benchmark, self.name = self.task.benchmark, self.task.name
        self.manifest: Manifest = self.task.manifest
        self.format = self.task.layout
        self.train_splits, self.eval_split = self.task.stage_splits(stage, final_includes_val)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise ValueError(f"{name} should be at least 1, got {value}")
        self.stage = stage
        config = data_config if data_config is not None else backbone_data_config(backbone)
        self.preprocessing: Preprocessing = preprocessing(preset, config, self.format)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed, self.drop_last = num_workers, pin_memory, seed, drop_last
        self.allow_count_mismatch = allow_count_mismatch
        self.cache = DecodedCache(cache_dir) if cache_dir else None
        self.cache_device = cache_device
        self.samples: dict[str, Samples] = {}
        self.datasets: dict[str, Dataset] = {}

    @property
    def class_ids(self) -> list:
        """The task's original class ids by label index (FGVC's own ids; else 0 .. n-1)."""
        return self.task.class_ids

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    def setup(self, stage: str | None = None) -> None:
        """Read the stage's split files and build its datasets (from the cache where the pipeline allows)."""
        if self.datasets:
            return
        self.task.verify()
        samples = {split: self.task.samples(split, self.allow_count_mismatch) for split in self.train_splits}
        self.samples = {
            "train": [s for split in self.train_splits for s in samples[split]],
            "eval": self.task.samples(self.eval_split, self.allow_count_mismatch),
        }
        names = {"train": "+".join(self.train_splits), "eval": self.eval_split}
        for part, samples in self.samples.items():
            is_train = part == "train"
            if self.cache is not None and self.preprocessing.cacheable(is_train):
                cached = self.cache.load(
                    f"{self.benchmark}_{self.manifest.name}",
                    names[part],
                    samples,
                    self.preprocessing.geometry(is_train),
                    self.preprocessing.size,
                    self.preprocessing.describe(is_train),
                )
                if self.cache_device:
                    cached = cached.to(self.cache_device)
                self.datasets[part] = CachedDataset(cached)  # uint8; normalized on the device
            else:
                self.datasets[part] = ImageListDataset(samples, self.preprocessing.pipeline(is_train))

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[part]
        batch_size = self.batch_size if part == "train" else self.eval_batch_size
        drop_last = self.drop_last and part == "train"
        # cached and decoding loaders visit the same sequence: the order depends on (seed, epoch) only
        sampler = EpochShuffle(dataset, self.seed) if shuffle else SequentialSampler(dataset)
        if isinstance(dataset, CachedDataset):  # whole uint8 batches by one gather; nothing left to decode
            return DataLoader(dataset, sampler=EpochBatches(sampler, batch_size, drop_last), batch_size=None)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed + 1),  # worker seeds
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalize uint8 image batches (from the cache) on the device they were moved to; others pass unchanged."""
        images, labels = batch
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
            images = self.preprocessing.normalize_batch(images)
        return images, labels

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("eval", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("eval", shuffle=False)

    def describe(self) -> dict[str, Any]:
        """What this stage serves: benchmark, name, splits, sizes and classes (for logs and results)."""
        return {
            "benchmark": self.benchmark,
            "dataset": self.manifest.name,
            "stage": self.stage,
            "train_splits": list(self.train_splits),
            "eval_split": self.eval_split,
            "train_size": len(self.samples.get("train", [])),
            "eval_size": len(self.samples.get("eval", [])),
            "num_classes": self.num_classes,
            "preset": self.preprocessing.preset,
        }
