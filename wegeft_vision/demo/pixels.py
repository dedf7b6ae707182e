"""A reference line for a real-image task: multinomial logistic regression on the raw pixels (scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..data.images import read_image
from ..data.tasks import Task, open_task


def _pixels(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples = task.samples(split)
    images = np.stack([read_image(path).numpy().reshape(-1) for path, _ in samples]).astype(np.float64) / 255.0
    return images, np.array([label for _, label in samples])


def pixel_logistic_regression(folder: str | Path) -> float:
    """Test top-1 (%) of a logistic regression (scikit-learn's defaults, C = 1, nothing selected) on the raw pixels
    of a task folder in the VTAB-1k layout (all images of one size), trained on train800val200 as the protocol's final
    runs are."""
    from sklearn.linear_model import LogisticRegression

    task = open_task(Path(folder))
    train_x, train_y = _pixels(task, "train800val200")
    test_x, test_y = _pixels(task, "test")
    # One BLAS thread: lbfgs makes hundreds of small matrix products, and threads spinning beside PyTorch's make each
    # 10-50x slower on a small machine (the probes of `scripts/eval_transfer.py` took seconds per C value, not 0.1 s)
    with threadpool_limits(limits=1, user_api="blas"):
        model = LogisticRegression(max_iter=5000).fit(train_x, train_y)
    return 100.0 * float((model.predict(test_x) == test_y).mean())
