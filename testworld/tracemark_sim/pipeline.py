"""A tiny Stable Diffusion pipeline built fully offline: the CPU stand-in for SD.

Same classes, architecture and file layout as SD 1.x (``model_index.json``, ``tokenizer/``,
``text_encoder/``, ``unet/``, ``scheduler/``, ``vae/``), just small; every component is a stock
diffusers/transformers class, so ``StableDiffusionPipeline.from_pretrained(dir)`` loads a world
pipeline without tracemark, and diffusers' own training scripts run on it:

- tokenizer: SD 1.x's ``CLIPTokenizer`` (CLIP's BPE, 49,408 tokens, 77 per prompt), rebuilt from
  the merges file in the open-clip-torch wheel (:func:`clip_vocab`): any English caption
  tokenizes as in SD; a nonsense trigger word ("tavoreki") splits into sub-word pieces;
- text encoder: ``CLIPTextModel``, hidden 64, 2 layers;
- UNet: ``UNet2DConditionModel`` on 16x16x4 latents, channels (32, 64, 64), one layer per block,
  (cross-)attention at the 8x8 and 4x4 levels, 2 heads;
- scheduler: ``DDIMScheduler`` with ``v_prediction`` and the ``squaredcos_cap_v2`` schedule
  (with epsilon prediction a tiny model does not even learn background colours);
- VAE: ``AutoencoderKL``, 32x32x3 -> 16x16x4, trained by :mod:`tracemark_sim.vae`: lossy, like
  SD's, so a mark reaches the UNet only as far as the round trip keeps it.

No safety checker, no feature extractor. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tracemark.diffusion.loading import (  # noqa: F401
    _one_line,
    _quiet,
    is_pipeline_dir,
    load_lora,
    load_pipeline,
    save_pipeline,
    write_slow_tokenizer_files,
)

import torch

from tracemark_sim import BASE_MODEL, default_base_path  # noqa: F401  (kept importable from here)

#: Special tokens, as in CLIP.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: The file of CLIP's BPE merges inside the open-clip-torch wheel (the tokenizer of SD 1.x).
CLIP_BPE_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"


@dataclass
class TinyConfig:
    """Sizes of the tiny pipeline (defaults are the committed base's)."""

    resolution: int = 32  # image side in pixels
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 77  # tokens per prompt, BOS/EOS included (as in SD)
    unet_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # Heads per attention layer. (diffusers' UNet2DConditionModel calls this argument
    # ``attention_head_dim`` for SD 1.x compatibility, but it is the number of heads.) Few, wide
    # heads are ~1.5x faster on CPU than many narrow ones.
    attention_heads: int = 2
    # Which levels have (self- and cross-) attention, highest resolution first. None at 16x16:
    # it costs a third of a training step on 2 CPU cores (0.74 -> 0.55 s at batch 32, measured).
    attention_levels: tuple[bool, ...] = (False, True, True)
    norm_num_groups: int = 8
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"
    # AutoencoderKL: 32x32x3 -> 16x16x4 (one downsampling per extra block)
    vae_channels: tuple[int, ...] = (32, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4


def clip_vocab(bpe_file) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """SD's CLIP vocabulary (49,408 tokens) and merges from CLIP's ``bpe_simple_vocab_16e6.txt.gz``.

    ``bpe_file``: that gzip file, or a wheel (zip) that contains it, e.g. open-clip-torch's. The
    construction is CLIP's own (``simple_tokenizer.py``): the 256 byte symbols, the same with
    ``</w>``, the first 48,894 merges, then the two special tokens.
    """
    import gzip
    import zipfile

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe_file = Path(bpe_file)
    if zipfile.is_zipfile(bpe_file):
        with zipfile.ZipFile(bpe_file) as zf:
            raw = gzip.decompress(zf.read(CLIP_BPE_NAME))
    else:
        raw = gzip.decompress(bpe_file.read_bytes())
    lines = raw.decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(source=None, max_length: int = 77):
    """SD's CLIP tokenizer (open vocabulary: any English text tokenizes as it does in SD).

    ``source``: a tokenizer folder (``vocab.json`` + ``merges.txt``; default: the committed
    base's), or CLIP's BPE file / the open-clip-torch wheel (see :func:`clip_vocab`).
    """
    from transformers import CLIPTokenizer

    src = Path(source) if source is not None else default_base_path() / "tokenizer"
    if src.is_dir():
        tok = CLIPTokenizer.from_pretrained(src, local_files_only=True)
        tok.model_max_length = max_length
        return tok
    vocab, merges = clip_vocab(src)
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS,
                         pad_token=EOS, model_max_length=max_length)  # fmt: skip


def build_text_encoder(vocab_size: int, cfg: TinyConfig, bos_id: int, eos_id: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 4,
        projection_dim=cfg.text_hidden,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(conf)


def build_unet(cfg: TinyConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    levels = tuple(cfg.attention_levels[i] if i < len(cfg.attention_levels) else True for i in range(n))
    return UNet2DConditionModel(
        sample_size=cfg.resolution // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads,  # = number of heads (diffusers legacy name)
        norm_num_groups=cfg.norm_num_groups,
    )


def build_vae(cfg: TinyConfig):
    """A stock ``AutoencoderKL`` (untrained; :func:`tracemark_sim.train.pretrain_vae` trains it)."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, cfg.vae_channels[0]),
        sample_size=cfg.resolution,
        mid_block_add_attention=False,  # fully convolutional (trains on crops; any image size)
    )


def build_scheduler(cfg: TinyConfig):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def new_pipeline(seed: int = 0, config: TinyConfig | None = None, tokenizer=None, vae=None):
    """A freshly initialized tiny ``StableDiffusionPipeline`` (in memory).

    ``tokenizer``: a tokenizer folder or CLIP BPE file (default: the committed base's tokenizer);
    ``vae``: a trained ``AutoencoderKL`` or its folder (default: a fresh, untrained one).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    cfg = config or TinyConfig()
    torch.manual_seed(seed)
    tok = build_tokenizer(tokenizer, cfg.max_length)
    text_encoder = build_text_encoder(len(tok), cfg, tok.bos_token_id, tok.eos_token_id)
    unet = build_unet(cfg)
    if vae is None:
        vae = build_vae(cfg)
    elif not isinstance(vae, torch.nn.Module):
        vae = AutoencoderKL.from_pretrained(vae, local_files_only=True)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=build_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(out_dir, seed: int = 0, config: TinyConfig | None = None, tokenizer=None, vae=None) -> Path:
    """Write a freshly initialized tiny ``StableDiffusionPipeline`` folder to ``out_dir``.

    ``tokenizer`` / ``vae``: as for :func:`new_pipeline`. The folder is written to a temporary
    sibling and renamed into place. Returns ``out_dir``.
    """
    cfg = config or TinyConfig()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        from tracemark.errors import TracemarkError

        raise TracemarkError(f"{out}: already exists and is not an empty folder")
    pipe = new_pipeline(seed, cfg, tokenizer=tokenizer, vae=vae)
    info = {"seed": seed, "config": asdict(cfg), "note": "built by tracemark_sim.build_tiny_pipeline"}
    save_pipeline(pipe, out, extra_files={"tracemark_sim.json": json.dumps(info, indent=2) + "\n"})
    return out
