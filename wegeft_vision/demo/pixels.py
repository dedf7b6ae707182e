"""A reference line for a real-image task: multinomial logistic regression on the raw pixels (scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.folders import folder_split
from ..data.images import read_image


def _pixels(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples = folder_split(folder, split)
    images = np.stack([read_image(folder / rel).numpy().reshape(-1) for rel, _ in samples]).astype(np.float64) / 255.0
    return images, np.array([label for _, label in samples])


def pixel_logistic_regression(folder: str | Path) -> float:
    """Test top-1 (%) of a logistic regression (scikit-learn's defaults, C = 1, nothing selected) on the raw pixels
    of a task folder in the VTAB-1k layout (all images of one size), trained on train800val200 as the protocol's final
    runs are."""
    from sklearn.linear_model import LogisticRegression

    folder = Path(folder)
    train_x, train_y = _pixels(folder, "train800val200")
    test_x, test_y = _pixels(folder, "test")
    model = LogisticRegression(max_iter=5000).fit(train_x, train_y)
    return 100.0 * float((model.predict(test_x) == test_y).mean())
