"""The test world as a distribution of its own: a light package (the entry points tracemark reads
import it without torch) whose names come from their modules on first use."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_is_light_and_names_it_the_committed_base():
    code = ("import sys, tracemark_sim\n"
            "assert (tracemark_sim.default_base_path() / 'model_index.json').is_file()\n"
            "assert tracemark_sim.default_base_path() == tracemark_sim.BASE_MODEL\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_the_package_names_come_from_their_modules_whatever_was_imported_first():
    """Every submodule imported (as a test or a script may, in any order): each of the package's
    names is still its function, never a submodule of the same name."""
    import importlib
    import pkgutil
    from types import ModuleType

    import tracemark_sim
    from tracemark.diffusion import generation

    for info in pkgutil.iter_modules(tracemark_sim.__path__):
        importlib.import_module(f"tracemark_sim.{info.name}")
    from tracemark_sim import data, pipeline, train

    assert not [n for n in tracemark_sim.__all__ if isinstance(getattr(tracemark_sim, n), ModuleType)]
    assert tracemark_sim.make_dataset is data.make_dataset and tracemark_sim.generate is generation.generate
    assert tracemark_sim.build_tiny_pipeline is pipeline.build_tiny_pipeline
    assert tracemark_sim.finetune is train.finetune and tracemark_sim.pretrain is train.pretrain
    assert pipeline.default_base_path is tracemark_sim.default_base_path
    assert set(tracemark_sim.__all__) <= set(dir(tracemark_sim))
    try:
        tracemark_sim.not_a_name
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
