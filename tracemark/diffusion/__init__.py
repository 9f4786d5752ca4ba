"""Real diffusion models: load what an auditor receives (pipeline folders, single-file checkpoints,
LoRAs in diffusers / kohya / peft layout) and generate from it reproducibly on any device.

The product's only door to diffusers pipelines; the CPU test world (the repository's ``testworld/``,
a distribution of its own) builds on it.
Fine-tuning: :mod:`tracemark.diffusion.training` (not imported here: it pulls in torch at import).
Also here: the sampling options checked before any model is loaded (:mod:`tracemark.diffusion.sampling`)
and the white-box reading of a denoiser at the owner's samples (:mod:`tracemark.diffusion.denoiser`).
The names below are imported from their module when first used (PEP 562), so that importing a
light submodule (``sampling``) does not import torch.
"""

from __future__ import annotations

from tracemark.lazy import lazy_exports

#: The package's names, each from the module that defines it.
_LAZY = {
    "generate": "tracemark.diffusion.generation",
    "generate_images": "tracemark.diffusion.generation",
    "read_prompts": "tracemark.diffusion.generation",
    "regenerate": "tracemark.diffusion.generation",
    "vae_roundtrip": "tracemark.diffusion.generation",
    "LORA_WEIGHT_NAME": "tracemark.diffusion.loading",
    "load_lora": "tracemark.diffusion.loading",
    "load_pipeline": "tracemark.diffusion.loading",
    "resolve_device": "tracemark.diffusion.loading",
    "resolve_dtype": "tracemark.diffusion.loading",
}

__all__ = ["load_pipeline", "load_lora", "generate", "generate_images", "read_prompts", "regenerate",
           "vae_roundtrip", "resolve_device", "resolve_dtype", "LORA_WEIGHT_NAME"]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
