"""Attacks: per-image attacks keep shapes; the copy-level averaging attack removes a pattern it can see."""

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.evaluation.attacks import ATTACKS, COPY_ATTACKS, GRIDS, apply, average_removal


def test_every_image_attack_runs_on_its_grid():
    x = np.random.default_rng(0).uniform(0, 255, size=(32, 32, 3)).astype(np.float32)
    for name, grid in GRIDS.items():
        for param in grid:
            y = ATTACKS[name](x, param)
            assert y.ndim == 3 and y.shape[2] == 3 and np.isfinite(y).all()
    with pytest.raises(TracemarkError, match="unknown attack"):
        apply("bogus", x, 1.0)


def _copy(n=200, rate=0.2, amp=6.0, seed=0):
    """Smooth near-identical images (little content to mask the pattern), ``rate`` of them carrying
    one fixed random pattern: the case the averaging attack is built for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = 128 + 40 * np.sin(xx / 6.0)[..., None] * np.ones(3)
    pattern = rng.choice([-amp, amp], size=(32, 32, 3))
    marked = rng.random(n) < rate
    images = [np.clip(base + rng.normal(0, 2, size=base.shape) + (pattern if m else 0), 0, 255).astype(np.float32)
              for m in marked]
    return images, marked, pattern


def test_average_removal_finds_and_removes_a_visible_shared_pattern():
    images, marked, pattern = _copy()
    out = average_removal(images, threshold=3.0)
    touched = np.array([not np.array_equal(a, b) for a, b in zip(images, out)])
    assert touched[marked].mean() > 0.9 and touched[~marked].mean() < 0.05

    def corr(imgs):  # mean correlation of the marked images with the pattern
        return np.mean([np.corrcoef((im - im.mean()).ravel(), pattern.ravel())[0, 1]
                        for im, m in zip(imgs, marked) if m])

    assert corr(out) < 0.25 * corr(images)


def test_average_removal_leaves_a_clean_copy_alone_and_passes_odd_sizes():
    images, _, _ = _copy(rate=0.0)
    images.append(np.zeros((16, 20, 3), np.float32))
    out = COPY_ATTACKS["average_removal"](images, 4.0)
    assert len(out) == len(images) and out[-1].shape == (16, 20, 3)
    assert sum(not np.array_equal(a, b) for a, b in zip(images, out)) <= 2
