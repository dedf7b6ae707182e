"""The authors' pipelines: TF1's bilinear resize (VTAB-1k) and PIL's shorter-side resize + crops (FGVC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wegeft_vision.data import BenchmarkDataModule, CachedDataset, ImageListDataset, preprocessing, tf_bilinear_resize

from .conftest import TINY_CONFIG

VIT_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}


def reference_resize(image: np.ndarray, out_h: int, out_w: int, half_pixel_centers: bool) -> np.ndarray:
    """Bilinear resize of a `(C, H, W)` float64 array, one output pixel at a time (TF's definition, no antialiasing)."""
    channels, in_h, in_w = image.shape

    def source(dst: int, in_size: int, out_size: int) -> tuple[int, int, float]:
        s = (dst + 0.5) * in_size / out_size - 0.5 if half_pixel_centers else dst * in_size / out_size
        base = math.floor(s)
        clamp = lambda i: min(max(i, 0), in_size - 1)  # noqa: E731
        return clamp(base), clamp(base + 1), s - base

    out = np.empty((channels, out_h, out_w))
    for y in range(out_h):
        y0, y1, wy = source(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, wx = source(x, in_w, out_w)
            top = (1 - wx) * image[:, y0, x0] + wx * image[:, y0, x1]
            bottom = (1 - wx) * image[:, y1, x0] + wx * image[:, y1, x1]
            out[:, y, x] = (1 - wy) * top + wy * bottom
    return out


CASES = {
    "up": ((5, 7), (11, 13)),
    "down": ((17, 23), (6, 9)),
    "non-square": ((4, 9), (9, 4)),
    "up-from-1x1": ((1, 1), (4, 4)),
    "down-to-1x1": ((4, 4), (1, 1)),
    "1-row": ((1, 7), (5, 3)),
    "1-column": ((6, 1), (2, 5)),
    "same-size": ((8, 8), (8, 8)),
    "224-from-32": ((32, 32), (224, 224)),
}


@pytest.mark.parametrize("half_pixel_centers", [False, True], ids=["tf1", "tf2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_tf_bilinear_matches_an_independent_reference(case, dtype, half_pixel_centers):
    (in_h, in_w), (out_h, out_w) = CASES[case]
    image = np.random.default_rng(0).random((3, in_h, in_w))
    out = tf_bilinear_resize(torch.from_numpy(image).to(dtype), (out_h, out_w), half_pixel_centers)
    assert out.shape == (3, out_h, out_w) and out.dtype == dtype
    # positions are float32 (as TF), so both dtypes agree with the float64 reference to float32 precision
    expected = reference_resize(image, out_h, out_w, half_pixel_centers)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=1e-5)


# tf.compat.v1.image.resize (TF1 pixel centres) and tf.image.resize(method="bilinear", antialias=False) of
# `TF_INPUT` in TensorFlow 2.21, float32 outputs.
TF_INPUT = [[0.0, 37.0, 74.0, 111.0, 148.0], [185.0, 222.0, 8.0, 45.0, 82.0], [119.0, 156.0, 193.0, 230.0, 16.0]]
TF_OUTPUTS = {
    ((2, 3), False): [[0.0, 61.666664, 123.33333], [152.0, 130.0, 108.00001]],
    ((2, 3), True): [[58.583332, 57.5, 119.166656], [147.83333, 146.75, 82.916695]],
    ((4, 7), False): [
        [0.0, 26.428572, 52.857143, 79.28571, 105.71429, 132.14287, 148.0],
        [138.75, 165.17857, 110.92856, 29.785713, 56.214287, 82.64287, 98.5],
        [152.0, 178.42857, 151.07143, 105.78571, 132.21429, 86.92856, 49.0],
        [119.0, 145.42857, 171.85715, 198.28571, 224.71429, 107.71424, 16.0],
    ],
    ((4, 7), True): [
        [0.0, 21.142857, 47.571434, 74.0, 100.42857, 126.857147, 148.0],
        [115.625, 136.76785, 118.374985, 32.75, 59.178574, 85.60715, 106.75],
        [160.25, 181.39285, 162.99998, 77.375, 103.80357, 89.89285, 57.25],
        [119.0, 140.14285, 166.57143, 193.0, 219.42857, 138.28571, 16.0],
    ],
}


@pytest.mark.parametrize(("size", "half_pixel_centers"), list(TF_OUTPUTS), ids=lambda v: str(v))
def test_tf_bilinear_reproduces_tensorflow(size, half_pixel_centers):
    image = torch.tensor(TF_INPUT).view(1, 1, 3, 5)
    out = tf_bilinear_resize(image, size, half_pixel_centers)[0, 0]
    torch.testing.assert_close(out, torch.tensor(TF_OUTPUTS[size, half_pixel_centers]), rtol=0, atol=1e-4)


def test_tf1_centres_read_the_top_left_of_each_cell():
    image = torch.rand(2, 3, 8, 12)
    assert torch.equal(tf_bilinear_resize(image, (4, 6)), image[..., ::2, ::2])  # TF1: source = 2 * dst exactly
    assert not torch.allclose(tf_bilinear_resize(image, (4, 6), half_pixel_centers=True), image[..., ::2, ::2])


@pytest.mark.parametrize(("in_size", "out_size"), [((7, 9), (20, 15)), ((40, 33), (11, 17))])
def test_tf2_centres_are_pytorchs_align_corners_false(in_size, out_size):
    image = torch.rand(2, 3, *in_size)
    ours = tf_bilinear_resize(image, out_size, half_pixel_centers=True)
    torch_ = F.interpolate(image, size=out_size, mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(ours, torch_, rtol=0, atol=1e-5)


def test_tf_bilinear_batches_and_errors():
    batch = torch.rand(4, 3, 10, 14)
    out = tf_bilinear_resize(batch, 6)
    assert out.shape == (4, 3, 6, 6)
    assert torch.equal(out[2], tf_bilinear_resize(batch[2], 6))  # (C, H, W) is one image
    with pytest.raises(ValueError, match=r"expected float \(N, C, H, W\)"):
        tf_bilinear_resize(batch.to(torch.uint8), 6)
    with pytest.raises(ValueError, match="sides should be at least 1"):
        tf_bilinear_resize(batch, (0, 4))


def test_authors_preset_resolves_per_benchmark():
    assert preprocessing("authors", VIT_CONFIG, "fgvc").preset == "authors_fgvc"
    assert preprocessing("authors", VIT_CONFIG, "vtab-1k").preset == "authors_vtab"
    assert preprocessing("authors", VIT_CONFIG, "imagefolder").preset == "authors_vtab"  # a folder of one's own
    assert preprocessing("authors_fgvc", VIT_CONFIG, "vtab-1k").preset == "authors_fgvc"  # named: as named


def test_authors_vtab_is_tf1_resize_then_normalize():
    prep = preprocessing("authors_vtab", VIT_CONFIG, "vtab-1k")
    assert prep.describe(train=False) == "authors_vtab:resize224:size224:bilinear-tf1:crop1"
    assert (prep.mean, prep.std, prep.augment) == ((0.5,) * 3, (0.5,) * 3, False)
    image = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8)
    out = prep.pipeline(train=False)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    # the authors: resize of the 0..255 values (unrounded, unclipped floats), / 255, then (x - mean) / std
    expected = (reference_resize(image.double().numpy(), 224, 224, False) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=1e-5)
    assert torch.equal(out, prep.pipeline(train=True)(image))  # no augmentation
    assert not prep.cacheable(True) and not prep.cacheable(False)  # uint8 would round the resized values


def test_authors_fgvc_eval_is_pils_shorter_side_resize_and_centre_crop():
    prep = preprocessing("authors_fgvc", VIT_CONFIG, "fgvc")
    assert (prep.resize, prep.size, prep.augment) == (256, 224, True)
    assert prep.describe(train=False) == "authors_fgvc:resize256:size224:bilinear-pil-shorter:crop1"
    pixels = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    # torchvision's Resize(256) on a PIL image: shorter side 256, longer int(256 * 400 / 300) = 341, PIL bilinear;
    # CenterCrop(224): top round(32 / 2) = 16, left round(117 / 2) = 58
    resized = np.asarray(Image.fromarray(pixels).resize((341, 256), Image.Resampling.BILINEAR))
    expected = torch.from_numpy(resized[16:240, 58:282].copy()).permute(2, 0, 1)
    assert torch.equal(prep.geometry(train=False)(image), expected)
    out = prep.pipeline(train=False)(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, prep.pipeline(train=False)(image))  # eval is deterministic
    torch.testing.assert_close(out, (expected.float() / 255 - 0.5) / 0.5)
    assert prep.cacheable(False) and not prep.cacheable(True)


@pytest.mark.parametrize(("side", "resize"), [(224, 256), (384, 438), (448, 512), (32, 36)])
def test_authors_fgvc_sizes_follow_the_authors_table(side, resize):
    config = {**VIT_CONFIG, "input_size": (3, side, side)}
    prep = preprocessing("authors_fgvc", config, "fgvc")
    assert (prep.resize, prep.size) == (resize, side)
    image = torch.randint(0, 256, (3, side + 5, 2 * side), dtype=torch.uint8)
    for train in (True, False):
        assert prep.pipeline(train)(image).shape == (3, side, side)


def test_authors_fgvc_train_crops_uniformly_and_flips_half_the_time():
    prep = preprocessing("authors_fgvc", TINY_CONFIG, "fgvc")  # input 32: resize 36, crop 32, offsets 0..4
    rows, cols = torch.meshgrid(torch.arange(36), torch.arange(36), indexing="ij")
    image = torch.stack([cols, rows, torch.zeros_like(rows)]).to(torch.uint8)  # pixel = its (x, y); 36: no resize
    geometry, augmentation = prep.geometry(train=True), prep.augmentation(train=True)

    def draws(seed: int, n: int) -> list[tuple[int, int, bool]]:
        torch.manual_seed(seed)
        seen = []
        for _ in range(n):
            out = augmentation(geometry(image)).long()
            assert out.shape == (3, 32, 32)
            top, first, last = int(out[1, 0, 0]), int(out[0, 0, 0]), int(out[0, 0, -1])
            flipped = first > last
            left = last if flipped else first
            window = torch.arange(left, left + 32)
            assert torch.equal(out[0, 0], window.flip(0) if flipped else window)  # a whole window, maybe mirrored
            assert torch.equal(out[1, :, 0], torch.arange(top, top + 32))
            seen.append((top, left, flipped))
        return seen

    seen = draws(seed=0, n=2000)
    assert draws(seed=0, n=50) == seen[:50]  # seeded: the same crops and flips again
    for axis in (0, 1):
        counts = np.bincount([s[axis] for s in seen])
        assert len(counts) == 5 and counts.min() >= 320 and counts.max() <= 480  # offsets 0..4, ~400 each
    assert 0.455 < np.mean([s[2] for s in seen]) < 0.545


def fgvc_module(root, manifest, tmp_path, **kw):
    return BenchmarkDataModule(
        "fgvc/cub", root, stage="final", manifest=manifest, data_config=TINY_CONFIG, preset="authors", batch_size=3,
        num_workers=0, cache_dir=tmp_path / "cache", **kw,
    )  # fmt: skip


def test_datamodule_caches_only_the_fgvc_eval_split(fgvc_root, fgvc_tiny_manifest, tmp_path):
    data = fgvc_module(fgvc_root, fgvc_tiny_manifest, tmp_path)
    data.setup()
    assert data.describe()["preset"] == "authors_fgvc" and data.preprocessing.resize == 36
    assert isinstance(data.datasets["eval"], CachedDataset) and isinstance(data.datasets["train"], ImageListDataset)
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    plain = BenchmarkDataModule(
        "fgvc/cub", fgvc_root, stage="final", manifest=fgvc_tiny_manifest, data_config=TINY_CONFIG,
        preset="authors", batch_size=3, num_workers=0,
    )  # fmt: skip
    for cached, decoded in zip(data.test_dataloader(), plain.test_dataloader(), strict=True):
        cached = data.on_after_batch_transfer(cached, 0)
        torch.testing.assert_close(cached[0], decoded[0], rtol=0, atol=1e-5)


def test_datamodule_never_caches_authors_vtab(vtab_root, vtab_tiny_manifest, tmp_path):
    data = BenchmarkDataModule(
        "vtab-1k/cifar", vtab_root, stage="search", manifest=vtab_tiny_manifest, data_config=TINY_CONFIG,
        preset="authors", batch_size=4, num_workers=0, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    data.setup()
    assert data.describe()["preset"] == "authors_vtab"
    assert all(isinstance(d, ImageListDataset) for d in data.datasets.values())
    images, _ = next(iter(data.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
