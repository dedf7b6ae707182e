"""Procedural dead leaves and the mixed pretraining source of the mini-ViT: deterministic samples, classes told apart
by colour, glyphs interleaved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wegeft_vision.data.glyphs import GlyphSet
from wegeft_vision.data.leaves import HELD_OUT_STREAM, TRAIN_STREAM, LeavesSet
from wegeft_vision.data.pretraining_source import pretraining_source


def test_samples_depend_only_on_seed_stream_and_index():
    leaves = LeavesSet(num_classes=10, seed=3)
    assert np.array_equal(leaves.render(17), LeavesSet(num_classes=10, seed=3).render(17))
    assert not np.array_equal(leaves.render(17), leaves.render(17, HELD_OUT_STREAM))
    assert not np.array_equal(leaves.render(17), LeavesSet(num_classes=10, seed=4).render(17))
    images, labels = leaves.batch(range(20), TRAIN_STREAM)
    assert images.shape == (20, 3, 32, 32) and images.dtype.is_floating_point is False
    assert labels.tolist() == [i % 10 for i in range(20)]


def _colour_histogram(image: np.ndarray) -> np.ndarray:
    bins = (image.reshape(-1, 3) // 64).astype(int) @ np.array([16, 4, 1])
    return np.bincount(bins, minlength=64) / len(bins)


def test_classes_keep_their_colours_across_samples():
    """What the glyphs lost: a class's palette is part of what it is. A nearest-centroid rule on 64-bin colour
    histograms alone tells held-out samples of 10 classes apart far above chance, and the images are in colour."""
    leaves = LeavesSet(num_classes=10, seed=0)
    centroids = np.stack([_colour_histogram(leaves.render(i)) for i in range(300)]).reshape(30, 10, 64).mean(0)
    held_out = np.stack([_colour_histogram(leaves.render(i, HELD_OUT_STREAM)) for i in range(200)])
    predicted = ((held_out[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == np.arange(200) % 10).mean() > 0.6  # chance 0.1
    images = np.stack([leaves.render(i) for i in range(50)]).astype(float)
    assert np.abs(images - images.mean(-1, keepdims=True)).mean() > 10.0  # far from grey


def test_mixed_source_interleaves_glyphs_after_the_leaves_classes():
    mixed = pretraining_source("mixed", classes=6, seed=2, size=32, glyph_classes=4)
    images, labels = mixed.batch(range(8), HELD_OUT_STREAM, strength=0.5)
    glyphs, glyph_labels = GlyphSet(4, 2, 32).batch([0, 1, 2, 3], HELD_OUT_STREAM, 0.5)
    leaves, leaf_labels = LeavesSet(6, 2, 32).batch([1, 3, 5, 7], HELD_OUT_STREAM)
    assert torch.equal(images[0::2], glyphs) and torch.equal(labels[0::2], glyph_labels + 6)
    assert torch.equal(images[1::2], leaves) and torch.equal(labels[1::2], leaf_labels)
    assert mixed.num_classes == 10
    with pytest.raises(
        ValueError, match="unknown pretraining source 'fractals'; expected one of leaves, glyphs, mixed"
    ):
        pretraining_source("fractals", classes=6, seed=0, size=32)
