"""Rendering: de-normalization, bilinear upsampling as OpenCV's, colormap overlays, and the PNG figures' sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from wegeft_vision.viz import (
    overlay,
    overlay_maps,
    save_cluster_mosaic,
    save_heatmap_grid,
    tile,
    to_uint8_images,
    upsample_maps,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def normalized_batch(batch: int = 3, size: tuple[int, int] = (32, 32), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, *size), generator=gen, dtype=torch.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return pixels, (pixels.float() / 255 - mean) / std


def test_to_uint8_images_undoes_the_normalization():
    pixels, images = normalized_batch()
    out = to_uint8_images(images, MEAN, STD)
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32, 3)
    assert np.array_equal(out, pixels.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(to_uint8_images(images[0], MEAN, STD), out[0])
    with pytest.raises(ValueError, match="mean must have one value per channel"):
        to_uint8_images(images, (0.5,), STD)


def test_upsampling_is_opencv_bilinear():
    maps = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    up = upsample_maps(maps, (32, 40))
    assert up.shape == (2, 3, 32, 40)
    expected = cv2.resize(maps[1, 2].numpy(), (40, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(up[1, 2].numpy(), expected, atol=1e-5)


def test_overlay_blends_the_colormap_with_alpha():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = torch.zeros(2, 2)
    heat[0, 0] = 1.0
    jet = cv2.cvtColor(cv2.applyColorMap(np.array([[255, 0]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    full = overlay(image, heat, alpha=1.0)
    assert np.array_equal(full[0, 0], jet[0]) and np.array_equal(full[7, 7], jet[1])  # upsampled corners
    mixed = overlay(image, heat, alpha=0.6)
    np.testing.assert_allclose(mixed[7, 7].astype(float), 0.6 * jet[1] + 0.4 * 100, atol=1)
    viridis = overlay(image, heat, alpha=1.0, colormap="viridis")
    assert not np.array_equal(viridis, full)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlay(image, heat, colormap="nope")
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(image, heat, alpha=1.5)


def test_overlay_maps_shapes():
    _, images = normalized_batch(batch=2)
    maps = torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    out = overlay_maps(images, maps, MEAN, STD)
    assert out.shape == (2, 4, 32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1, 3], overlay(to_uint8_images(images[1], MEAN, STD), maps[1, 3]))
    with pytest.raises(ValueError, match="same B"):
        overlay_maps(images, maps[:1], MEAN, STD)


def test_heatmap_grid_png_has_one_cell_per_layer_and_cluster(tmp_path):
    _, images = normalized_batch(batch=1)
    maps = {0: torch.rand(4, 4, 4), 2: torch.rand(4, 4, 4)}
    path = save_heatmap_grid(images[0], maps, tmp_path / "sub" / "grid.png", MEAN, STD, cell_inches=1.0, dpi=50)
    png = cv2.imread(str(path))
    assert png.shape == (2 * 50, (1 + 4) * 50, 3)
    path = save_heatmap_grid(images[0], maps, tmp_path / "two.png", clusters=[3, 1], title="t", dpi=40)
    assert cv2.imread(str(path)).shape == (2 * 60, 3 * 60, 3)
    with pytest.raises(ValueError, match=r"clusters \[4\] are not clusters of these maps \(0..3\)"):
        save_heatmap_grid(images[0], maps, tmp_path / "bad.png", clusters=[4])


def test_cluster_mosaic_tiles_overlays_at_image_resolution(tmp_path):
    _, images = normalized_batch(batch=5)
    maps = torch.rand(5, 4, 4, generator=torch.Generator().manual_seed(3))
    path = save_cluster_mosaic(images, maps, tmp_path / "mosaic.png", MEAN, STD, columns=3, padding=2)
    png = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert png.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3)
    fifth = overlay(to_uint8_images(images[4], MEAN, STD), maps[4])  # row 1, column 1
    assert np.array_equal(png[34:66, 34:66], fifth)
    assert (png[32:34] == 255).all()  # padding
    assert tile(np.zeros((2, 4, 4, 3), np.uint8), columns=8, padding=1).shape == (4, 9, 3)
