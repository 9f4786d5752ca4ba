"""The committed pretrained base (testworld/tracemark_sim/base_model/)."""

from __future__ import annotations

import pytest

from tracemark_sim import default_base_path, load_pipeline

BASE = default_base_path()
needs_base = pytest.mark.skipif(not (BASE / "model_index.json").is_file(), reason="base model not built yet")


@needs_base
def test_base_is_small_and_loads():
    size = sum(p.stat().st_size for p in BASE.rglob("*") if p.is_file())
    assert size <= 32 * 1024 * 1024, size  # weights <= 25 MB + the tokenizer's 5 MB
    weights = sum(p.stat().st_size for p in BASE.rglob("*.safetensors"))
    assert weights <= 25 * 1024 * 1024, weights
    assert not (BASE / "checkpoints").exists()
    pipe = load_pipeline(BASE)
    out = pipe(["a small red circle at the center on a blue background"], num_inference_steps=5, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)


@needs_base
def test_base_follows_captions_quick():
    """24 generations (12 background colours x 2): at least 80% right (chance 8%)."""
    from tracemark_sim.probe import probe_model

    result = probe_model(BASE, n_per_colour=2, seed=2, steps=15)
    assert result["accuracy"] >= 0.8, result


@needs_base
@pytest.mark.slow
def test_base_follows_captions():
    """Background-colour accuracy of 96 generations (12 colours x 8) must be >= 80% (chance 8%)."""
    from tracemark_sim.probe import probe_model

    result = probe_model(BASE, n_per_colour=8, seed=1)
    assert result["accuracy"] >= 0.8, result
