"""A tiny Stable Diffusion pipeline built fully offline: the CPU stand-in for SD.

Same architecture and file layout as SD 1.x (``model_index.json``, ``tokenizer/``,
``text_encoder/``, ``unet/``, ``scheduler/``, ``vae/``), just small:

- tokenizer: a CLIP byte-level BPE whose merges are learned locally from the synthetic caption
  vocabulary (every caption word is one token; any other text, e.g. a nonsense trigger word like
  "tavoreki", still tokenizes into several sub-word or byte tokens);
- text encoder: ``CLIPTextModel``, hidden 64, 2 layers;
- UNet: ``UNet2DConditionModel`` on 16x16x12 latents, channels (32, 64, 64) (16x16, 8x8, 4x4),
  one layer per block, cross-attention at every level, 2 heads (about 1.8M parameters);
- scheduler: ``DDIMScheduler`` with ``v_prediction`` and the ``squaredcos_cap_v2`` schedule
  (with epsilon prediction a tiny model does not even learn background colours);
- "VAE": :class:`tracemark.sim.codec.SpaceToDepthCodec`, exact space-to-depth (32x32x3 <->
  16x16x12), so faint patterns in the data reach the UNet untouched.

No safety checker, no feature extractor. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tracemark.sim.codec import SpaceToDepthCodec

#: Special tokens, as in CLIP.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass
class TinyConfig:
    """Sizes of the tiny pipeline (defaults are the committed base's)."""

    resolution: int = 32  # image side in pixels
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 48  # tokens per prompt, BOS/EOS included
    unet_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # Heads per attention layer. (diffusers' UNet2DConditionModel calls this argument
    # ``attention_head_dim`` for SD 1.x compatibility, but it is the number of heads.) Few, wide
    # heads are ~1.5x faster on CPU than many narrow ones.
    attention_heads: int = 2
    norm_num_groups: int = 8
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"


def build_tokenizer(words=None, max_length: int = 48):
    """A CLIP tokenizer whose BPE merges make every word in ``words`` a single token.

    The vocabulary is CLIP's layout in miniature: the 256 byte symbols, the same with the
    end-of-word suffix ``</w>``, the merged tokens, then the two special tokens. Merges are learned
    by the *tokenizers* BPE trainer on ``words`` (deterministic), so re-applying them rebuilds each
    word exactly; any other word falls back to smaller pieces and, at worst, bytes.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    if words is None:
        from tracemark.sim.data import caption_words

        words = caption_words()
    words = sorted({w.lower() for w in words if w})
    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    trainer_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    trainer_tok.train_from_iterator(words, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]

    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    for sym in alphabet:
        vocab[sym + "</w>"] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=max_length,
    )
    return tok


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


def build_unet(cfg: TinyConfig, latent_channels: int = 12):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.resolution // 2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads,  # = number of heads (diffusers legacy name)
        norm_num_groups=cfg.norm_num_groups,
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


def new_pipeline(seed: int = 0, vocab_words=None, config: TinyConfig | None = None):
    """A freshly initialized tiny ``StableDiffusionPipeline`` (in memory)."""
    from diffusers import StableDiffusionPipeline

    cfg = config or TinyConfig()
    torch.manual_seed(seed)
    tok = build_tokenizer(vocab_words, cfg.max_length)
    text_encoder = build_text_encoder(len(tok), cfg, tok.bos_token_id, tok.eos_token_id)
    unet = build_unet(cfg)
    pipe = StableDiffusionPipeline(
        vae=SpaceToDepthCodec(sample_size=cfg.resolution),
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


def build_tiny_pipeline(out_dir, seed: int = 0, vocab_words=None, config: TinyConfig | None = None) -> Path:
    """Write a freshly initialized tiny ``StableDiffusionPipeline`` folder to ``out_dir``.

    ``vocab_words``: words that must be single tokens (default: every word of the synthetic
    captions, :func:`tracemark.sim.data.caption_words`). The folder is written to a temporary
    sibling and renamed into place. Returns ``out_dir``.
    """
    cfg = config or TinyConfig()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        from tracemark.errors import TracemarkError

        raise TracemarkError(f"{out}: already exists and is not an empty folder")
    pipe = new_pipeline(seed, vocab_words, cfg)
    info = {"seed": seed, "config": asdict(cfg), "note": "built by tracemark.sim.build_tiny_pipeline"}
    save_pipeline(pipe, out, extra_files={"tracemark_sim.json": json.dumps(info, indent=2) + "\n"})
    return out


def save_pipeline(pipe, out_dir, extra_files: dict[str, str] | None = None) -> Path:
    """``pipe.save_pretrained`` (safetensors) into ``out_dir``, component by component.

    Everything is written to a temporary sibling first; then each component folder and file is
    swapped in with a rename, so an interrupted save never leaves a half-written component.
    Entries of ``out_dir`` that are not part of the pipeline (e.g. ``checkpoints/``) are kept.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        with _quiet(dlogging, tlogging):
            pipe.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        entries = sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json")  # index last
        for entry in entries:
            dest = out / entry.name
            if dest.is_dir() and not dest.is_symlink():
                old = out / f".{entry.name}.old-{os.getpid()}"
                os.replace(dest, old)
                os.replace(entry, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class _quiet:
    """Silence diffusers/transformers info logs and progress bars inside a ``with`` block."""

    def __init__(self, *loggers):
        self.loggers = loggers

    def __enter__(self):
        self.saved = [(lg, lg.get_verbosity()) for lg in self.loggers]
        for lg in self.loggers:
            lg.set_verbosity_error()
            lg.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        for lg, level in self.saved:
            lg.set_verbosity(level)
            lg.enable_progress_bar()
        return False


def is_pipeline_dir(path) -> bool:
    p = Path(path)
    return (p / "model_index.json").is_file() and (p / "unet").is_dir()


def load_pipeline(model_dir, lora=None, device=None, dtype=None):
    """Load a pipeline folder (tiny or a real SD 1.x) offline, optionally with LoRA weights.

    ``lora``: a folder holding ``pytorch_lora_weights.safetensors`` or the file itself.
    Raises :class:`TracemarkError` for a missing folder, a folder that is not a pipeline, or
    LoRA weights that do not fit the model.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    from tracemark.errors import TracemarkError

    import tracemark.sim.codec  # noqa: F401  (diffusers resolves the codec from sys.modules)

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise TracemarkError(f"{model_dir}: model folder not found")
    if not is_pipeline_dir(model_dir):
        raise TracemarkError(f"{model_dir}: not a diffusers pipeline folder (no model_index.json / unet/)")
    from transformers.utils import logging as tlogging

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        with _quiet(dlogging, tlogging):
            pipe = StableDiffusionPipeline.from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise TracemarkError(f"{model_dir}: cannot load pipeline ({_one_line(exc)})") from exc
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        load_lora(pipe, lora)
    if device is not None:
        pipe.to(device)
    return pipe


def load_lora(pipe, lora) -> None:
    """``pipe.load_lora_weights`` with user-facing errors."""
    from tracemark.errors import TracemarkError

    from tracemark.sim.train import LORA_WEIGHT_NAME

    lora = Path(lora)
    if lora.is_dir():
        if not (lora / LORA_WEIGHT_NAME).is_file():
            raise TracemarkError(f"{lora}: no {LORA_WEIGHT_NAME} in this folder")
        where, name = lora, LORA_WEIGHT_NAME
    elif lora.is_file():
        where, name = lora.parent, lora.name
    else:
        raise TracemarkError(f"{lora}: LoRA weights not found")
    import warnings

    def adapters(model) -> set[str]:
        return set(getattr(model, "peft_config", None) or {})

    before = {"unet": adapters(pipe.unet), "text_encoder": adapters(pipe.text_encoder)}
    try:
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        with warnings.catch_warnings(), _quiet(dlogging, tlogging):
            warnings.simplefilter("ignore", RuntimeWarning)  # partial matches are checked below
            pipe.load_lora_weights(str(where), weight_name=name, local_files_only=True)
    except Exception as exc:  # diffusers/peft raise many kinds for a mismatched LoRA
        raise TracemarkError(f"{lora}: LoRA weights do not fit this model ({_one_line(exc)})") from exc
    # Every tensor of the file must have landed in the model: a LoRA made for another model can
    # match a subset of module names and load silently with the rest dropped.
    from safetensors import safe_open

    with safe_open(str(where / name), framework="pt") as f:
        keys = list(f.keys())
    for part, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        expected = sum(1 for k in keys if k.startswith(part + "."))
        new = adapters(model) - before[part]
        got = sum(1 for n, _ in model.named_parameters() if "lora_" in n and any(f".{a}." in n for a in new))
        if expected != got:
            raise TracemarkError(
                f"{lora}: LoRA weights do not fit this model ({part}: {got} of {expected} tensors matched)"
            )
    if not any(adapters(m) - before[p] for p, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))):
        raise TracemarkError(f"{lora}: no LoRA layer of this file matched the model")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_base_path() -> Path:
    """Folder of the committed pretrained base model (``tracemark/sim/base_model/``)."""
    return Path(__file__).resolve().parent / "base_model"
