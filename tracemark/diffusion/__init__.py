"""Real diffusion models: load what an auditor receives (pipeline folders, single-file checkpoints,
LoRAs in diffusers / kohya / peft layout) and generate from it reproducibly on any device.

The product's only door to diffusers pipelines; the CPU test world (the repository's ``testworld/``,
a distribution of its own) builds on it.
Fine-tuning: :mod:`tracemark.diffusion.training` (not imported here: it pulls in torch at import).
"""

from tracemark.diffusion.generation import generate, generate_images, read_prompts, regenerate
from tracemark.diffusion.loading import LORA_WEIGHT_NAME, load_lora, load_pipeline, resolve_device, resolve_dtype

__all__ = ["load_pipeline", "load_lora", "generate", "generate_images", "read_prompts", "regenerate",
           "resolve_device", "resolve_dtype", "LORA_WEIGHT_NAME"]
