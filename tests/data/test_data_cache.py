"""Decoded-tensor cache: same tensors as the decoding pipeline, hits on reuse, invalidation when a file changes."""

from __future__ import annotations

import torch

from wegeft_vision.data import CachedDataset, DecodedCache, preprocessing, read_image

from .conftest import TINY_CONFIG, write_image

PREP = preprocessing("paper", TINY_CONFIG)


def load(cache, samples):
    return cache.load("vtab-1k_tiny", "train800", samples, PREP.geometry(True), PREP.size, PREP.describe(True))


def test_hit_then_invalidation_when_a_file_changes(tmp_path):
    samples = [(write_image(tmp_path / "img" / f"{i}.png", seed=i), i % 2) for i in range(5)]
    cache = DecodedCache(tmp_path / "cache", workers=2)
    first = load(cache, samples)
    assert first.built and first.images.shape == (5, 3, 32, 32) and first.images.dtype == torch.uint8
    assert first.labels.tolist() == [0, 1, 0, 1, 0]
    second = load(cache, samples)
    assert not second.built and second.key == first.key and torch.equal(second.images, first.images)

    write_image(samples[3][0], seed=99)  # same name, new content
    third = load(cache, samples)
    assert third.built and third.key != first.key
    assert torch.equal(third.images[3], PREP.geometry(True)(read_image(samples[3][0])))
    entries = sorted(p.name for p in (tmp_path / "cache" / "vtab-1k_tiny").iterdir())
    assert len(entries) == 2 and not first.path.exists()  # the stale entry (data + json) is gone


def test_labels_and_settings_are_part_of_the_key(tmp_path):
    samples = [(write_image(tmp_path / f"{i}.png", seed=i), 0) for i in range(2)]
    cache = DecodedCache(tmp_path / "cache")
    key = load(cache, samples).key
    assert load(cache, [(samples[0][0], 1), samples[1]]).key != key
    other = preprocessing("paper", {**TINY_CONFIG, "interpolation": "bilinear"})
    entry = cache.load("vtab-1k_tiny", "train800", samples, other.geometry(True), other.size, other.describe(True))
    assert entry.key != key and entry.built


def test_cached_batches_equal_the_decoding_pipeline(tmp_path):
    samples = [(write_image(tmp_path / f"{i}.jpg", seed=i, size=(40, 30)), i) for i in range(4)]
    split = load(DecodedCache(tmp_path / "cache"), samples)
    dataset = CachedDataset(split.to("cpu"), PREP.normalize())
    batch, labels = dataset[[2, 0]]
    expected = torch.stack([PREP.pipeline(False)(read_image(samples[i][0])) for i in (2, 0)])
    assert torch.allclose(batch, expected) and labels.tolist() == [2, 0]
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and label == 1 and len(dataset) == 4
    raw, _ = CachedDataset(split)[[2, 0]]
    assert raw.dtype == torch.uint8 and torch.allclose(PREP.normalize_batch(raw), expected, atol=1e-5)


def test_empty_split(tmp_path):
    split = load(DecodedCache(tmp_path / "cache"), [])
    assert split.images.shape == (0, 3, 32, 32) and len(split) == 0
