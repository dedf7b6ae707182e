"""Image decoding (to uint8 CHW RGB tensors) and the map-style dataset over `(path, label)` lists."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a `(3, H, W)` uint8 RGB tensor (grey, palette and CMYK images are converted).

    Decoding uses PIL (libjpeg-turbo, libpng); torchvision's own decoders are deprecated since torchvision 0.29.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing image {path}")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (H, W, 3) -> (3, H, W), one copy


def verify_image(path: str | Path) -> str | None:
    """Why `path` is not a usable image, or None when it decodes (JPEGs at reduced scale, which is fast).

    Returns:
        `"missing"`, or `"unreadable: <reason>"`, or None.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads the whole stream
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"unreadable: {err}"
    return None


class ImageListDataset(Dataset):
    """Map-style dataset over `(path, label)` pairs: decodes with `read_image`, then applies `transform`.

    Args:
        samples: absolute image paths and class indices.
        transform: applied to the uint8 `(3, H, W)` tensor (e.g. a `Preprocessing` pipeline); None keeps it.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform else image), label

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]
