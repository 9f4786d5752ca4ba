"""Fixtures of the CPU-world tests: one freshly built tiny pipeline and one small dataset per session."""

from __future__ import annotations

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A freshly initialized tiny pipeline folder (untrained; built in well under a second)."""
    from tracemark_sim import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("sim") / "tiny", seed=0)


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """24 captioned 32x32 shapes images (imagefolder layout)."""
    from tracemark_sim import make_dataset

    return make_dataset(tmp_path_factory.mktemp("sim") / "data", 24, "shapes", seed=3)
