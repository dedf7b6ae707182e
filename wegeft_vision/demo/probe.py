"""Linear probes on frozen features: how well a backbone's pooled features (what its head reads) separate a task's
classes with the backbone left as it is (`scripts/eval_transfer.py --quick`, the transfer test).

The probe follows the protocol's rule: the inverse regularization C is selected on val200 (trained on train800),
then the probe is refit on train800val200 (train800 + val200) and scored once on test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..backbones import data_config
from ..data.images import read_image
from ..data.tasks import open_task
from ..data.transforms import preprocessing

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class ProbeResult:
    top1: float  # test top-1 (%) of the probe refit on train800val200
    c: float  # the C selected on val200
    val_top1: float  # its val200 top-1 (%), trained on train800


@lru_cache(maxsize=16)
def _images(folder: Path, split: str, config: tuple) -> tuple[torch.Tensor, np.ndarray]:
    """A split's images through the evaluation preprocessing of a data config (kept: every model probed on a task
    with one data config reads the same tensors)."""
    task = open_task(folder)
    pipeline = preprocessing("paper", dict(config), task.layout).pipeline(train=False)
    samples = task.samples(split)
    images = torch.stack([pipeline(read_image(path)) for path, _ in samples])
    return images, np.array([label for _, label in samples])


@torch.no_grad()
def pooled_features(model: torch.nn.Module, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's pooled features of a split of a task folder (evaluation preprocessing of its data config), with
    the labels."""
    images, labels = _images(Path(folder), split, tuple(sorted(data_config(model).items())))
    model.eval()
    pooled = [model.forward_head(model.forward_features(batch), pre_logits=True) for batch in images.split(256)]
    return torch.cat(pooled).double().numpy(), labels


def linear_probe(model: torch.nn.Module, folder: str | Path, c_grid: tuple[float, ...] = C_GRID) -> ProbeResult:
    """A multinomial logistic regression on the standardized frozen features of a VTAB-1k-layout task folder."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = Path(folder)
    split = {name: pooled_features(model, folder, name) for name in ("train800", "val200", "test")}
    split["train800val200"] = tuple(
        np.concatenate(pair) for pair in zip(split["train800"], split["val200"], strict=True)
    )

    def fitted(c: float, on: str) -> object:
        with threadpool_limits(limits=1, user_api="blas"):  # see `pixels.pixel_logistic_regression`
            return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(*split[on])

    def top1(classifier, on: str) -> float:
        features, labels = split[on]
        return 100.0 * float((classifier.predict(features) == labels).mean())

    scores = {c: top1(fitted(c, "train800"), "val200") for c in c_grid}
    best = max(c_grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularization
    return ProbeResult(top1(fitted(best, "train800val200"), "test"), best, scores[best])
