"""The CPU world: a tiny Stable Diffusion stand-in, synthetic captioned data, and training.

Every component of a world pipeline is a stock diffusers / transformers class (``AutoencoderKL``,
``UNet2DConditionModel``, ``CLIPTextModel``, SD's ``CLIPTokenizer``, ``DDIMScheduler``), so a
plain ``StableDiffusionPipeline.from_pretrained(dir)`` loads it without importing tracemark, and
third-party trainers run on it.

A distribution of its own (``tracemark-testworld``, the repository's ``testworld/``), so that the
product's wheel does not carry its weights. tracemark never imports it by name: it finds the world
through the entry points declared in ``testworld/pyproject.toml``: ``tracemark.default_base``
(:func:`default_base_path`, the default ``--base`` of ``tracemark finetune`` and ``tracemark
shadow``) and ``tracemark.cli_plugins`` (``tracemark sim``, :mod:`tracemark_sim.cli`).

Importing the package is light (no torch): :data:`BASE_MODEL` and :func:`default_base_path` are
defined here, the other names are imported from their modules on first use.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

#: Folder of the committed pretrained base model (``testworld/tracemark_sim/base_model/``).
BASE_MODEL = Path(__file__).resolve().parent / "base_model"


def default_base_path() -> Path:
    """Folder of the committed pretrained base model (:data:`BASE_MODEL`)."""
    return BASE_MODEL


#: The package's names that live in a submodule (imported when first used: they import torch).
_LAZY = {
    "make_dataset": "tracemark_sim.data",
    "generate": "tracemark.diffusion.generation",  # the product's, re-exported
    "build_tiny_pipeline": "tracemark_sim.pipeline",
    "load_pipeline": "tracemark_sim.pipeline",
    "finetune": "tracemark_sim.train",
    "pretrain": "tracemark_sim.train",
}

__all__ = ["BASE_MODEL", "default_base_path", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
