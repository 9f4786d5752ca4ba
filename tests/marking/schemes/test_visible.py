"""visible: keyed corner block pattern; the ``cells`` parameter sets the number of key cells."""

from __future__ import annotations

import numpy as np
import pytest

from tracemark.detection import stats
from tracemark.errors import TracemarkError
from tracemark.marking.schemes import get_scheme, parse_params
from tracemark.marking.schemes.visible import VisibleScheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import natural, stored

KEY = Key(bytes(range(32)))


def _z(F: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The audit's aggregated statistic (mean feature vs key signs)."""
    return stats.key_statistic(stats.aggregate(F, "correlation"), P, "correlation")


def test_params_roundtrip_and_default_is_backward_compatible():
    s = get_scheme("visible")
    assert s.params() == {"scheme": "visible", "strength": 24.0, "cells": 8} and s.dim == 256
    # registries written before `cells` existed record no cells: they must rebuild the same scheme
    old = get_scheme("visible", strength=24.0)
    assert np.array_equal(old.key_vectors([KEY]), s.key_vectors([KEY]))
    p = get_scheme("visible", cells=16).params()
    assert get_scheme("visible", **{k: v for k, v in p.items() if k != "scheme"}).params() == p


@pytest.mark.parametrize("cells", [8, 16])
def test_patch_area_and_detection(cells):
    s = VisibleScheme(cells=cells)
    rng = np.random.default_rng(0)
    imgs = [natural(32, 32, rng) * 0.5 + 64 for _ in range(8)]
    marked = [stored(s.embed(im, KEY)) for im in imgs]
    changed = np.abs(marked[0] - stored(imgs[0])).max(axis=2) > 0
    assert changed.sum() == cells * cells  # one pixel per cell on the 32 grid
    kv = s.key_vectors([KEY])
    assert np.count_nonzero(kv) == cells * cells and s.dim == 4 * cells * cells
    z = _z(s.features(marked), s.key_vectors([KEY]))[0]
    # a perfectly reproduced patch gives z close to sqrt(cells^2) = cells: z grows with the cells
    assert z > 0.8 * cells  # measured 7.8 (8 cells), 15.7 (16)
    # unmarked images: the statistic is N(0, 1) over keys. The key's own z is one draw (measured
    # 0.59 / 1.47); 400 other keys give mean 0.00 / -0.10 and sd 1.00 / 0.96 (sd of the mean: 0.05)
    F_clean = s.features([stored(im) for im in imgs])
    assert abs(_z(F_clean, s.key_vectors([KEY]))[0]) < 3
    z_null = _z(F_clean, s.key_vectors(decoy_keys(400, seed=2)))
    assert abs(z_null.mean()) < 0.2 and 0.85 < z_null.std(ddof=1) < 1.15, (z_null.mean(), z_null.std(ddof=1))
    z_decoys = _z(s.features(marked), s.key_vectors(decoy_keys(200, seed=1)))
    assert np.abs(z_decoys).max() < z


def test_random_vectors_match_key_vectors_distribution():
    s = VisibleScheme(cells=16)
    r = s.random_vectors(400, np.random.default_rng(0))
    assert r.shape == (400, s.dim) and set(np.unique(r)) <= {-1.0, 0.0, 1.0}
    assert (np.count_nonzero(r, axis=1) == 256).all()


def test_bad_cells_and_unknown_params_are_clear_errors():
    with pytest.raises(TracemarkError, match="cells must be in 1..16"):
        get_scheme("visible", cells=17)
    with pytest.raises(TracemarkError, match="scheme 'visible'"):
        get_scheme("visible", bogus=1)
    assert parse_params(["cells=16", "band=[3, 16]", "name=abc"]) == {"cells": 16, "band": [3, 16], "name": "abc"}
    with pytest.raises(TracemarkError, match="KEY=VALUE"):
        parse_params(["cells"])
