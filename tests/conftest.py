from __future__ import annotations

import numpy as np
import pytest

from tracemark.registry import Registry
from tracemark.samples import make_sample_dataset, pink_noise

from registry_helpers import seeded_registry


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("TRACEMARK_HOME", str(h))
    return h


@pytest.fixture
def registry(home) -> Registry:
    """A registry with a fixed master key: tests that check who is named must not flake in ~alpha
    of runs on a fresh random key (see registry_helpers.seeded_registry)."""
    return seeded_registry(home)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """50 natural-looking 128x128 images (PNG and JPEG mixed) with captions."""
    return make_sample_dataset(tmp_path_factory.mktemp("ds") / "data", n=50, size=128, seed=1, fmt="mixed")


@pytest.fixture(scope="session")
def natural_images():
    rng = np.random.default_rng(7)
    return [pink_noise(128, 128, rng).astype(np.float32) for _ in range(64)]
