"""Training in the CPU world: pretraining the tiny base, and fine-tuning with the world's preset.

The training loop and the world's :data:`TINY` preset are the product's
(:mod:`tracemark.diffusion.training`, re-exported here; the values stay the world's so experiments
stay comparable); this module holds what only the tiny world needs: :func:`pretrain` of a fresh
tiny pipeline (UNet + text encoder, EMA), :func:`export_checkpoint`, and :func:`finetune` with the
world's defaults and signature.

The world caches VAE posteriors once (``cache_latents``: a CPU tensor of a few MB, as diffusers'
``--cache_latents``), because a 2-core budget cannot afford the encoder at every step; images are
still read batch by batch. Checkpoints: ``<out>/checkpoints/last.pt``, as in the product.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tracemark.diffusion.loading import LORA_WEIGHT_NAME  # noqa: F401  (re-exported: one name for writer and loader)
from tracemark.diffusion.training import (  # noqa: F401  (re-exported for the world's callers)
    CHECKPOINT,
    LORA_TARGETS,
    TINY,
    TRAINING_INFO,
    Preset,
    RunConfig,
    load_trainable,
    run_training,
)
from tracemark.diffusion.training import finetune as _finetune

#: Default LoRA target set of this world (see docs/sim.md for the measurement behind it).
DEFAULT_LORA_TARGETS = "broad"
DEFAULT_RANK = TINY.rank

# The tiny world's fine-tuning values (:data:`TINY`) live with the product trainer, which the
# product's ``tracemark finetune`` / ``tracemark shadow`` use on the bundled test model.

#: Pretraining a fresh tiny base: steps, lr, batch size, warmup, schedule, EMA decay.
PRETRAIN = dict(steps=5000, lr=1e-3, batch_size=32, warmup=200, lr_schedule="cosine", ema=0.999)


def export_checkpoint(run_dir, dest, use_ema: bool = True) -> Path:
    """Write the pipeline of a pretraining / full fine-tuning run's last checkpoint to ``dest``
    (EMA weights when the run keeps an EMA), e.g. to probe a run that is still going."""
    from tracemark.errors import TracemarkError
    from tracemark_sim.pipeline import load_pipeline, new_pipeline, save_pipeline

    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise TracemarkError(f"{ckpt}: checkpoint not found")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    rc = state["run_config"]
    if rc["method"] == "lora":
        raise TracemarkError(f"{ckpt}: a LoRA run; its weights are written at the end only")
    if rc["base"] is None:
        pipe = new_pipeline(seed=rc["seed"], vae=rc.get("vae"), tokenizer=rc.get("tokenizer"))
    else:
        pipe = load_pipeline(rc["base"])
    weights = state["weights"]
    if use_ema and state.get("ema") is not None:
        weights = dict(zip(weights.keys(), state["ema"]["shadow"]))
    te = pipe.text_encoder if any(k.startswith("text_encoder.") for k in weights) else None
    load_trainable(pipe.unet, te, weights)
    save_pipeline(pipe, dest)
    return Path(dest)


def pretrain(data_dir, out_dir, steps: int | None = None, *, lr: float | None = None, batch_size: int | None = None,
             seed: int = 0, ema: float | None = None, save_every: int = 500, resume: bool = False,
             num_threads: int | None = None, progress: bool = True, mixed_precision: str = "no",
             log_every: int = 100, unet_channels: list[int] | None = None, vae=None,
             tokenizer=None) -> Path:  # fmt: skip
    """Pretrain a fresh tiny pipeline (UNet + text encoder) on ``data_dir``; writes a pipeline
    folder to ``out_dir`` (EMA weights). ``resume=True`` continues from ``out_dir/checkpoints``.
    ``unet_channels``: UNet block widths (default TinyConfig's), e.g. a second, smaller base.
    ``vae``: folder of a trained ``AutoencoderKL`` (:func:`tracemark_sim.vae.pretrain_vae`;
    default: the committed base's)."""
    from tracemark_sim.pipeline import TinyConfig, default_base_path, new_pipeline

    d = dict(PRETRAIN)
    d.update({k: v for k, v in dict(steps=steps, lr=lr, batch_size=batch_size, ema=ema).items() if v is not None})
    if vae is None:  # a second base shares the committed base's VAE, as SD variants share SD's
        if (default_base_path() / "vae" / "config.json").is_file():
            vae = default_base_path() / "vae"
    rc = RunConfig(
        method="pretrain", data_dir=str(data_dir), out_dir=str(out_dir), base=None, steps=d["steps"], lr=d["lr"],
        batch_size=d["batch_size"], seed=seed, warmup=d["warmup"], lr_schedule=d["lr_schedule"], ema=d["ema"],
        rank=0, lora_alpha=0, lora_targets=[], train_text_encoder=True, save_every=save_every,
        mixed_precision=mixed_precision, unet_channels=[int(c) for c in unet_channels or []],
        vae=str(vae) if vae else None, tokenizer=str(tokenizer) if tokenizer else None, cache_latents=True,
    )  # fmt: skip
    cfg = TinyConfig(unet_channels=tuple(rc.unet_channels)) if rc.unet_channels else None
    pipe = new_pipeline(seed=rc.seed, config=cfg, vae=rc.vae, tokenizer=rc.tokenizer)
    return run_training(rc, pipe=pipe, progress=progress, resume=resume, num_threads=num_threads, log_every=log_every)


def finetune(data_dir, base, out, method: str = "lora", steps: int | None = None, lr: float | None = None,
             rank: int = DEFAULT_RANK, seed: int = 0, *, batch_size: int | None = None,
             lora_targets: str | list[str] = DEFAULT_LORA_TARGETS, lora_alpha: float | None = None,
             flip: bool = False, caption_dropout: float = 0.1, train_text_encoder: bool = False,
             save_every: int = 500, resume: bool = False, num_threads: int | None = None,
             progress: bool = True, mixed_precision: str = "no", ema: float | None = None,
             log_every: int = 100) -> Path:  # fmt: skip
    """Fine-tune the pipeline at ``base`` on ``data_dir`` with the :data:`TINY` preset (see
    :func:`tracemark.diffusion.training.finetune`; this signature and its defaults are the world's)."""
    return _finetune(data_dir, base, out, method=method, preset=TINY, steps=steps, lr=lr, rank=rank, seed=seed,
                     batch_size=batch_size, lora_targets=lora_targets, lora_alpha=lora_alpha, flip=flip,
                     caption_dropout=caption_dropout, train_text_encoder=train_text_encoder, save_every=save_every,
                     resume=resume, num_threads=num_threads, progress=progress, mixed_precision=mixed_precision,
                     ema=ema, log_every=log_every)  # fmt: skip
