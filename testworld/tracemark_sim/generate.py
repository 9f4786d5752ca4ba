"""Moved to :mod:`tracemark.diffusion.generation` (product code); kept so the world's imports work."""

from tracemark.diffusion.generation import (  # noqa: F401
    _generate_batch,
    _initial_latents,
    generate,
    generate_images,
    read_prompts,
    regenerate,
)
