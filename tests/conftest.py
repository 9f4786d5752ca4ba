from __future__ import annotations

import numpy as np
import pytest

from tracemark.evaluation.samples import make_sample_dataset, pink_noise
from tracemark.registry.database import Registry

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


@pytest.fixture
def interrupt_marking(monkeypatch):
    """``interrupt_marking(n)``: the n-th marked file (counting from the call) raises
    KeyboardInterrupt, as Ctrl-C in the middle of writing a copy would."""
    import importlib

    protect_mod = importlib.import_module("tracemark.marking.protect")  # the package exports a function of that name
    real = protect_mod.mark_file
    calls = {"n": 0, "at": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(protect_mod, "mark_file", flaky)

    def arm(n: int) -> None:
        calls["n"], calls["at"] = 0, n

    return arm


def pytest_sessionstart(session):
    """The tests need the CPU test world installed beside tracemark (``make venv`` does it): a
    distribution of its own, found by the product through entry points (tracemark.plugins)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("tracemark-testworld")
    except PackageNotFoundError:
        pytest.exit("the CPU test world is not installed: run `make venv` (or `pip install --no-deps -e testworld`)",
                    returncode=4)
