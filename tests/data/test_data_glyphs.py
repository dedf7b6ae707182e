"""Procedural glyphs (the mini-ViT's source task): deterministic samples, fixed classes, jitter that grows."""

from __future__ import annotations

import numpy as np
import pytest

from wegeft_vision.data.glyphs import HELD_OUT_STREAM, TRAIN_STREAM, GlyphSet


def test_samples_depend_only_on_seed_stream_and_index():
    glyphs = GlyphSet(num_classes=10, seed=3)
    assert np.array_equal(glyphs.render(17), GlyphSet(num_classes=10, seed=3).render(17))
    assert not np.array_equal(glyphs.render(17), glyphs.render(17, HELD_OUT_STREAM))
    assert not np.array_equal(glyphs.render(17), GlyphSet(num_classes=10, seed=4).render(17))
    images, labels = glyphs.batch(range(20), TRAIN_STREAM)
    assert images.shape == (20, 3, 32, 32) and images.dtype.is_floating_point is False
    assert labels.tolist() == [i % 10 for i in range(20)]  # every class once per num_classes samples


def test_a_class_keeps_its_strokes_and_classes_differ():
    glyphs = GlyphSet(num_classes=50, seed=0)
    first = glyphs.strokes(7)
    assert 2 <= len(first) <= 4 and all(s.shape == (4, 2) for s in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, glyphs.strokes(7), strict=True))
    assert len({tuple(np.round(glyphs.strokes(c)[0].ravel(), 6)) for c in range(50)}) == 50
    with pytest.raises(ValueError, match="glyph class 50 is outside 0..49"):
        glyphs.strokes(50)


def test_jitter_strength_zero_draws_every_sample_of_a_class_alike():
    glyphs = GlyphSet(num_classes=5, seed=0)
    samples = range(2, 200, 5)  # class 2, forty times

    def spread(strength: float) -> float:  # how much the ink's layout differs between samples of the class
        images = [glyphs.render(i, strength=strength).astype(float) for i in samples]
        ink = [np.abs(img - np.median(img, axis=(0, 1))).sum(axis=2) > 60 for img in images]  # background: median
        return float(np.mean([np.mean(a != b) for a in ink for b in ink]))

    assert spread(0.0) < 0.5 * spread(1.0)
