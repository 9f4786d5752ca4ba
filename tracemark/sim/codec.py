"""An exact, invertible stand-in for Stable Diffusion's VAE: space-to-depth.

``encode`` folds each 2x2 block of pixels into channels (``pixel_unshuffle``: 32x32x3 ->
16x16x12) and ``decode`` unfolds it (``pixel_shuffle``). Nothing is lost, so a faint pattern in
the training images reaches the UNet intact, and the UNet works at 16x16 (about 3x faster per step
than pixel space on 2 cores). It exposes the part of ``AutoencoderKL``'s interface that
``StableDiffusionPipeline`` and the diffusers training recipe use: ``encode(x).latent_dist``
with ``sample()``/``mode()``, ``decode(z).sample``, ``config.scaling_factor``,
``config.block_out_channels`` (its length sets the pipeline's ``vae_scale_factor`` = 2).

Loading: ``save_pretrained`` records this component in ``model_index.json`` as
``["tracemark.sim.codec", "SpaceToDepthCodec"]``. diffusers 0.42 resolves a library it does not
know only from ``sys.modules`` (it never imports a module because a repository names it), so
``import tracemark.sim`` (or this module) before ``StableDiffusionPipeline.from_pretrained``, or
use :func:`tracemark.sim.load_pipeline`, which does it for you.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

# diffusers checks a custom component's class against the base classes it knows by looking them
# up *in the component's module* (getattr(module, "ModelMixin")): keep this name importable here.
__all__ = ["SpaceToDepthCodec", "ModelMixin", "ConfigMixin"]


@dataclass
class CodecEncoderOutput(BaseOutput):
    latent_dist: DiagonalGaussianDistribution


@dataclass
class CodecDecoderOutput(BaseOutput):
    sample: torch.Tensor


class SpaceToDepthCodec(ModelMixin, ConfigMixin):
    """Parameter-free, lossless image codec with the ``AutoencoderKL`` interface."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        factor: int = 2,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        sample_size: int = 32,
        force_upcast: bool = False,
        latent_channels: int | None = None,
        out_channels: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        # One persistent buffer so the module has a device/dtype and a weights file to save.
        self.register_buffer("_anchor", torch.zeros(1), persistent=True)
        # AutoencoderKL-compatible config entries read by pipelines and training scripts; they
        # are derived, whatever was passed. vae_scale_factor = 2 ** (len(block_out_channels) - 1).
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two, got {factor}")
        levels = int(factor).bit_length()  # 1 -> 1 level, 2 -> 2 levels, 4 -> 3 levels
        self.register_to_config(
            latent_channels=in_channels * factor * factor,
            out_channels=in_channels,
            block_out_channels=[in_channels * factor * factor] * levels,
        )

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.factor**2

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, self.config.factor)
        # deterministic: sample() == mode() == mean, exactly
        params = torch.cat([z, torch.zeros_like(z)], dim=1)
        dist = DiagonalGaussianDistribution(params, deterministic=True)
        if not return_dict:
            return (dist,)
        return CodecEncoderOutput(latent_dist=dist)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None, **kwargs):
        x = F.pixel_shuffle(z, self.config.factor)
        if not return_dict:
            return (x,)
        return CodecDecoderOutput(sample=x)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True, generator=None):
        z = self.encode(sample).latent_dist.mode()
        return self.decode(z, return_dict=return_dict)

    # AutoencoderKL API no-ops (nothing to tile or slice here).
    def enable_slicing(self):
        pass

    def disable_slicing(self):
        pass

    def enable_tiling(self, *args, **kwargs):
        pass

    def disable_tiling(self):
        pass
