"""Decoding to uint8 RGB tensors (colour, grey, palette; JPEG, PNG, BMP) and image verification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wegeft_vision.data import ImageListDataset, read_image, verify_image

from .conftest import write_image


@pytest.mark.parametrize("name, mode", [("a.png", "RGB"), ("b.jpg", "RGB"), ("c.png", "L"), ("d.png", "P")])
def test_read_image_gives_uint8_rgb(tmp_path, name, mode):
    image = read_image(write_image(tmp_path / name, seed=1, size=(10, 14), mode=mode))
    assert image.dtype == torch.uint8 and image.shape == (3, 10, 14)


def test_png_is_lossless(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    assert torch.equal(read_image(tmp_path / "x.png"), torch.from_numpy(pixels).permute(2, 0, 1))


def test_other_formats(tmp_path):
    Image.fromarray(np.full((5, 6, 3), 7, np.uint8)).save(tmp_path / "x.bmp")
    assert read_image(tmp_path / "x.bmp").shape == (3, 5, 6)


def test_errors_and_verification(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError, match="missing image .*none.png"):
        read_image(tmp_path / "none.png")
    assert verify_image(tmp_path / "none.png") == "missing"
    assert verify_image(tmp_path / "bad.jpg").startswith("unreadable")
    assert verify_image(write_image(tmp_path / "ok.jpg", seed=0)) is None


def test_image_list_dataset(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    dataset = ImageListDataset([(p, i) for i, p in enumerate(paths)], transform=lambda x: x.float())
    image, label = dataset[2]
    assert len(dataset) == 3 and label == 2 and image.dtype == torch.float32 and dataset.labels == [0, 1, 2]
