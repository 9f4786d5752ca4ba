"""Shared fixtures of the research smoke tests (research/ is imported from the repo root)."""

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """An untrained tiny pipeline (seconds to build): code paths, not numbers."""
    pytest.importorskip("diffusers")
    from tracemark_sim import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "base", seed=0)


@pytest.fixture
def small_grid(monkeypatch):
    """The experiment grid at its smallest: 4 licensees, 40 owner images, 2 fine-tuning and sampling steps."""
    from research.eval import grid

    monkeypatch.setattr(grid, "N_LICENSEES", 4)
    monkeypatch.setattr(grid, "N_DATA", 40)
    monkeypatch.setattr(grid, "DEFAULT_STEPS", 2)
    monkeypatch.setattr(grid, "GEN_STEPS", 2)
    return grid
