"""Write a diffusers SD 1.x pipeline as one original-layout ("LDM", CompVis / A1111) checkpoint.

Model sites publish Stable Diffusion as a single ``.safetensors`` file with the original training
code's key names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``); ``tracemark audit --model CKPT --config DIR`` must
read that. No such file exists offline, so the tests write one from a tiny pipeline here.

Why not diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``: its UNet and VAE
tables are hard-coded for SD 1.x's exact block counts (4 levels, 2 resnets per down block), so on
a smaller UNet every index after the first level lands in the wrong block; and with transformers
>= 5.6 (``CLIPTextModel`` saved without its ``text_model.`` level) it writes
``cond_stage_model.transformer.embeddings.*``, which diffusers' reader does not recognise as a CLIP
text encoder ("weights for this component appear to be missing"). The mapping below is derived
from each component's config instead, so it is the public format for any SD 1.x-shaped size.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

#: diffusers resnet parameter names -> LDM ``ResBlock`` names (UNet).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
#: diffusers VAE attention names -> LDM ``AttnBlock`` names (1x1 convolutions there).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    """Replace the first dotted component run of ``key`` found in ``table``."""
    for old, new in table.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    raise KeyError(key)


def unet_prefix_map(config) -> dict[str, str]:
    """diffusers ``UNet2DConditionModel`` module prefixes -> LDM ``UNetModel`` prefixes.

    LDM numbers the encoder as one flat ``input_blocks`` list (conv_in, then per level
    ``layers_per_block`` [resnet, attention] pairs and a downsampler), the decoder as
    ``output_blocks`` (per level ``layers_per_block + 1`` pairs, the upsampler as the pair's last
    member), and the middle as ``middle_block.0/1/2``."""
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    m = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
         "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    for i in range(n):
        for j in range(per):
            idx = 1 + i * (per + 1) + j
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{idx}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{idx}.1"
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
        attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (per + 1) + j}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (per + 1) + j}.1"
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{i * (per + 1) + per}.{2 if attn else 1}.conv"
    return m


def vae_prefix_map(config) -> dict[str, str]:
    """diffusers ``AutoencoderKL`` prefixes -> LDM ``AutoencoderKL`` prefixes (decoder levels reversed)."""
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    m = {}
    for part in ("encoder", "decoder"):
        m[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        m[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        m[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        m[f"{part}.conv_norm_out"] = f"{part}.norm_out"
    for i in range(n):
        for j in range(per):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        m[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        for j in range(per + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        m[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{n - 1 - i}.upsample"
    return m


def _map_keys(state: dict, prefixes: dict[str, str], inner=None) -> dict:
    """Rename every key by its longest matching module prefix; ``inner(rest, tensor)`` renames
    what follows it. Keys under no prefix (``conv_in``, ``quant_conv``) keep their name."""
    order = sorted(prefixes, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        head = next((p for p in order if key.startswith(p + ".")), None)
        if head is None:
            out[key] = value
            continue
        rest, new_value = key[len(head) + 1:], value
        if inner is not None:
            rest, new_value = inner(head, rest, value)
        out[f"{prefixes[head]}.{rest}"] = new_value
    return out


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel``'s weights under LDM names (transformer blocks keep theirs)."""
    def inner(head, rest, value):
        if ".resnets." in head or head.startswith("mid_block.resnets"):
            rest = _rename(rest, _UNET_RESNET)
        return rest, value

    return {UNET_PREFIX + k: v for k, v in _map_keys(unet.state_dict(), unet_prefix_map(unet.config), inner).items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL``'s weights under LDM names; attention projections become 1x1 convs."""
    def inner(head, rest, value):
        if head.endswith("attentions.0"):
            rest = _rename(rest, _VAE_ATTN)
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif "resnets" in head and rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest[len("conv_shortcut."):]
        return rest, value

    return {VAE_PREFIX + k: v for k, v in _map_keys(vae.state_dict(), vae_prefix_map(vae.config), inner).items()}


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel``'s weights as SD 1.x stores them (``cond_stage_model.transformer.text_model.*``,
    with the ``position_ids`` buffer), whichever transformers version saved the model."""
    out = {}
    for k, v in text_encoder.state_dict().items():
        out[TEXT_PREFIX + k.removeprefix("text_model.")] = v
    n = text_encoder.config.max_position_embeddings
    out[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(n)[None]
    return out


def pipeline_to_ldm(pipe, text_encoder: bool = True) -> dict[str, torch.Tensor]:
    """The whole checkpoint: UNet, VAE, (text encoder) and the DDPM schedule buffers SD files carry."""
    sd = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if text_encoder:
        sd.update(text_encoder_to_ldm(pipe.text_encoder))
    sched = getattr(pipe.scheduler, "betas", None)
    if sched is not None:
        sd["betas"] = sched.float()
        sd["alphas_cumprod"] = pipe.scheduler.alphas_cumprod.float()
    return sd


def write_single_file(pipeline_dir, out, dtype: torch.dtype | None = None, text_encoder: bool = True) -> Path:
    """Write the pipeline folder ``pipeline_dir`` as one LDM-layout ``.safetensors`` file ``out``.

    ``dtype``: cast floating tensors (``torch.float16`` as model sites publish); ``text_encoder``:
    False writes a UNet + VAE file (to test a checkpoint missing a component). Returns ``out``."""
    from safetensors.torch import save_file

    from tracemark.diffusion.loading import load_pipeline

    sd = pipeline_to_ldm(load_pipeline(pipeline_dir), text_encoder=text_encoder)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out
