"""The CPU world: a tiny Stable Diffusion stand-in, synthetic captioned data, and training.

Every component of a world pipeline is a stock diffusers / transformers class (``AutoencoderKL``,
``UNet2DConditionModel``, ``CLIPTextModel``, SD's ``CLIPTokenizer``, ``DDIMScheduler``), so a
plain ``StableDiffusionPipeline.from_pretrained(dir)`` loads it without importing tracemark, and
third-party trainers run on it.
"""

from tracemark.sim.data import make_dataset
from tracemark.sim.generate import generate
from tracemark.sim.pipeline import build_tiny_pipeline, default_base_path, load_pipeline
from tracemark.sim.train import finetune, pretrain

__all__ = ["build_tiny_pipeline", "make_dataset", "pretrain", "finetune", "generate", "load_pipeline",
           "default_base_path"]  # fmt: skip
