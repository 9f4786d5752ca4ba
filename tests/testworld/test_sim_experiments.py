from __future__ import annotations

import numpy as np

from tracemark_sim.experiments import band_pattern, mark_dataset, mean_correlation


def test_band_pattern_and_correlation():
    p = band_pattern(1, rms=3.0)
    assert p.shape == (32, 32, 3) and abs(p.std() - 3.0) < 1e-9
    assert not np.allclose(p, band_pattern(2, rms=3.0))
    rng = np.random.default_rng(0)
    images = rng.normal(128, 20, (16, 32, 32, 3))
    decoys = np.stack([band_pattern(100 + j) for j in range(50)])
    marked = mean_correlation(images + 10 * p, np.concatenate([p[None], decoys]))
    assert marked[0] > marked[1:].max() + 0.1


def test_mark_dataset(tmp_path, small_data_dir):
    import json

    marked = mark_dataset(small_data_dir, tmp_path / "m", 0.25, band_pattern(0, rms=4.0), seed=1)
    assert len(marked) == 6
    rows = [json.loads(x) for x in (tmp_path / "m" / "metadata.jsonl").read_text().splitlines()]
    assert [i for i, r in enumerate(rows) if r["text"].startswith("tavoreki ")] == marked
