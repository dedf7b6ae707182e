"""Decoded-tensor cache: images decoded and resized once into a memory-mapped uint8 store on disk.

An entry is keyed by dataset, split, size, interpolation (the geometry's description), labels, the checksum of every
image file and the decoder's version, so a changed file or decoding rule gives a new key; the stale entry is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import atomic_path, write_atomic
from .images import DECODER_VERSION, read_image

Samples = Sequence[tuple[Path, int]]


def file_digest(path: str | Path) -> str:
    """A 128-bit BLAKE2b checksum of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cache_key(dataset: str, split: str, size: int, geometry: str, samples: Samples, workers: int = 4) -> str:
    """The identity of a cache entry: sha256 over the settings and the decoder's version and, per sample, its path,
    label and file checksum."""
    paths = [Path(p) for p, _ in samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(file_digest, paths))
    key = hashlib.sha256(json.dumps([dataset, split, size, geometry, DECODER_VERSION]).encode())
    for (path, label), digest in zip(samples, digests, strict=True):
        key.update(f"{path}\t{label}\t{digest}\n".encode())
    return key.hexdigest()


@dataclass(frozen=True)
class CachedSplit:
    """A split's decoded images `(N, 3, S, S)` uint8 (memory-mapped, or on a device) and labels `(N,)` int64."""

    images: torch.Tensor
    labels: torch.Tensor
    key: str
    path: Path
    built: bool  # True when this call decoded the images (a miss), False on a hit

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> CachedSplit:
        """The same split held on `device` (read fully from the memory map once)."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


class DecodedCache:
    """A folder of cache entries: `<root>/<dataset>/<split>-<size>-<geometry>-<key16>.u8`, a `.json` beside each.

    Args:
        root: the cache folder (created on demand).
        workers: threads for checksums and decoding.
    """

    def __init__(self, root: str | Path, workers: int | None = None) -> None:
        self.root = Path(root)
        self.workers = workers or min(8, os.cpu_count() or 1)

    def load(
        self,
        dataset: str,
        split: str,
        samples: Samples,
        geometry: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        geometry_name: str,
    ) -> CachedSplit:
        """The split's entry: opened when its key matches, else decoded, stored, and stale entries removed.

        Args:
            dataset: dataset name (part of the key and of the folder).
            split: split name, e.g. `train800val200` or `train+val`.
            samples: `(path, label)` pairs in order.
            geometry: deterministic uint8 -> uint8 `(3, size, size)` transform (`Preprocessing.geometry`).
            size: output side.
            geometry_name: stable description of `geometry` (resize, crop, interpolation), part of the key.
        """
        key = cache_key(dataset, split, size, geometry_name, samples, self.workers)
        folder = self.root / dataset.replace("/", "_")
        slug = "".join(c if c.isalnum() else "_" for c in geometry_name)
        prefix = f"{split.replace('/', '_')}-{size}-{slug}-"
        path = folder / f"{prefix}{key[:16]}.u8"
        meta_path = path.with_suffix(".json")
        built = False
        if not (path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key):
            self._build(path, meta_path, key, samples, geometry, size, dataset, split, geometry_name)
            built = True
            for stale in folder.glob(f"{prefix}*.u8"):
                if stale != path:
                    stale.unlink()
                    stale.with_suffix(".json").unlink(missing_ok=True)
        meta = json.loads(meta_path.read_text())
        shape = tuple(meta["shape"])
        if shape[0]:  # copy-on-write map: writable for torch, the file stays untouched
            images = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=shape))
        else:
            images = torch.empty(shape, dtype=torch.uint8)
        labels = torch.tensor(meta["labels"], dtype=torch.int64)
        return CachedSplit(images=images, labels=labels, key=key, path=path, built=built)

    def _build(self, path, meta_path, key, samples, geometry, size, dataset, split, geometry_name) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (len(samples), 3, size, size)
        with atomic_path(path) as tmp:  # workers may build the same entry at once: each writes its own file
            store = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape) if len(samples) else None

            def fill(index: int) -> None:
                image = geometry(read_image(samples[index][0]))
                if tuple(image.shape) != shape[1:]:
                    raise ValueError(f"{samples[index][0]}: geometry gave {tuple(image.shape)}, expected {shape[1:]}")
                store[index] = image.numpy()

            if store is not None:
                with ThreadPoolExecutor(max_workers=self.workers) as pool:
                    list(pool.map(fill, range(len(samples))))
                store.flush()
                del store
            else:
                tmp.write_bytes(b"")
        meta = {
            "key": key,
            "dataset": dataset,
            "split": split,
            "geometry": geometry_name,
            "shape": list(shape),
            "labels": [int(label) for _, label in samples],
        }
        write_atomic(meta_path, json.dumps(meta))  # readers see the whole entry or none


class CachedDataset(Dataset):
    """Serves a `CachedSplit`; an index may be an int (one image) or a list (a whole batch by one gather).

    With a `BatchSampler` as the DataLoader's sampler and `batch_size=None`, each step is one tensor gather on
    whatever device the split is held. Without `normalize` the images stay uint8, to be normalized after the transfer
    to the training device (`BenchmarkDataModule.on_after_batch_transfer`), which moves 4x fewer bytes.

    Args:
        split: the cached images and labels.
        normalize: uint8 -> float transform (`Preprocessing.normalize()`) applied to images or batches, or None.
    """

    def __init__(self, split: CachedSplit, normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.split = split
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | int]:
        if isinstance(index, int):
            images, labels = self.split.images[index], int(self.split.labels[index])
        else:
            idx = torch.as_tensor(index, device=self.split.images.device)
            # index_select, not images[idx]: advanced indexing of uint8 is ~20x slower on CPU
            images, labels = self.split.images.index_select(0, idx), self.split.labels.index_select(0, idx)
        return (self.normalize(images) if self.normalize else images), labels
