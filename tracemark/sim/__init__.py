"""The CPU world: a tiny Stable Diffusion stand-in, synthetic captioned data, and training.

Importing this package also registers the space-to-depth codec with diffusers' loader (diffusers
resolves the ``vae`` component ``["tracemark.sim.codec", "SpaceToDepthCodec"]`` from
``sys.modules``), so after ``import tracemark.sim`` a plain
``StableDiffusionPipeline.from_pretrained(dir, local_files_only=True)`` loads a sim pipeline.
"""

from tracemark.sim import codec as _codec  # noqa: F401  (registers the codec module)
from tracemark.sim.data import make_dataset
from tracemark.sim.generate import generate
from tracemark.sim.pipeline import build_tiny_pipeline, default_base_path, load_pipeline
from tracemark.sim.train import finetune, pretrain

__all__ = ["build_tiny_pipeline", "make_dataset", "pretrain", "finetune", "generate", "load_pipeline",
           "default_base_path"]  # fmt: skip
