"""What a run costs, measured while it trains: time per optimizer step, images per second, peak memory.

`StepCost` times every training step (the device synchronized on GPUs, so the time is the step's, not its launch's)
and reads the peak memory: the CUDA allocator's peak on GPUs, the process's peak resident size on CPUs. A packed run
counts the images of every point it trains (image-steps), so its images/s compares with K separate runs'.
`SavedBytes` counts the bytes autograd keeps for backward (`--pack auto` on a CPU, `scripts/bench_pack.py`).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import lightning as L
import torch


class StepCost(L.Callback):
    """Step time, images/s and peak memory of a fit (`summary()`); the first step (warm-up, allocations) is left out
    of the times when there are others."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.images: list[int] = []
        self._started = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        self._sync(module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        self._sync(module)
        self.times.append(time.perf_counter() - self._started)
        packed = getattr(module, "packed", None)
        points = 1 if packed is None else len(packed.active)
        self.images.append(len(batch[1]) * points)

    def summary(self, device: torch.device | None = None) -> dict[str, Any]:
        """`step_ms` (median), `images_per_s` (image-steps over the timed steps), `peak_memory_mb`."""
        if not self.times:
            return {"step_ms": "", "images_per_s": "", "peak_memory_mb": peak_memory_mb(device)}
        keep = slice(1, None) if len(self.times) > 1 else slice(None)
        times, images = self.times[keep], self.images[keep]
        return {
            "step_ms": round(1000.0 * statistics.median(times), 3),
            "images_per_s": round(sum(images) / sum(times), 2),
            "peak_memory_mb": peak_memory_mb(device),
        }


def peak_memory_mb(device: torch.device | None = None) -> float:
    """The CUDA allocator's peak on a GPU device, else the process's peak resident set size, in MiB."""
    if device is not None and device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """The bytes autograd saves for backward inside the block (each storage once; a tensor without a storage of its
    own, inside `vmap`, by its size), e.g. `with SavedBytes() as saved: loss = ...`, then `saved.total`."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}
        super().__init__(self._pack, lambda tensor: tensor)

    def __enter__(self) -> SavedBytes:
        super().__enter__()
        return self

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a wrapper without a storage of its own (inside vmap)
            self.storages[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())
