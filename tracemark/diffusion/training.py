"""Fine-tune a Stable Diffusion 1.x pipeline on an imagefolder dataset (LoRA or full UNet).

Read top to bottom, it is diffusers' ``train_text_to_image_lora.py`` / ``train_text_to_image.py``
as a library function:

1. load the pipeline (or take a fresh one, for the test world's pretraining) and open the
   imagefolder dataset as a *streaming* ``Dataset``: images are read and preprocessed per batch
   (shorter side resized, centre crop), captions encoded per batch (a CPU LRU cache of caption
   embeddings when the text encoder is frozen); nothing holds the whole dataset;
2. each optimizer step, ``gradient_accumulation_steps`` micro-batches: images in [-1, 1]
   (optional random horizontal flip) -> ``vae.encode`` -> ``latent_dist`` sample x ``scaling_factor``;
   random timesteps; ``noise_scheduler.add_noise``; the target is ``get_velocity`` for
   ``v_prediction`` (else the noise); captions replaced by "" with probability ``caption_dropout``;
   MSE (optionally min-SNR weighted, ``snr_gamma``); AdamW; gradient clipping at 1.0;
3. save, on the main process only: ``method="lora"`` writes ``pytorch_lora_weights.safetensors``
   (diffusers format, loads with ``pipe.load_lora_weights(dir)`` and
   :func:`tracemark.diffusion.loading.load_lora`); ``method="full"`` writes a pipeline folder.

Hyperparameters come from a :class:`Preset`; the default, :data:`SD15`, is diffusers'
text-to-image LoRA recipe for SD 1.5; :data:`TINY` is the CPU test world's (its tiny test
model); :data:`PRESETS` names both and :func:`preset_for_base` picks one by the base's UNet size.
This module never imports the test world.

Several GPUs: ``accelerate launch`` a script that calls :func:`finetune`; the prepared DataLoader
gives each process its own batches, ``accelerator.accumulate`` syncs gradients once per optimizer
step, and only the main process writes files.

Determinism: batches are slices of seeded per-epoch permutations indexed by the global
micro-batch number, and every random draw of micro-batch ``m`` comes from a generator seeded
with ``(seed, m)``; so a run resumed from ``<out>/checkpoints/last.pt`` (``resume=True``)
continues exactly as if it had not been interrupted. Checkpoints (trainable weights, optimizer,
LR schedule, EMA, step) are written atomically every ``save_every`` optimizer steps and at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tracemark.diffusion.loading import LORA_WEIGHT_NAME, load_pipeline, save_pipeline

TRAINING_INFO = "training.json"
CHECKPOINT = Path("checkpoints") / "last.pt"

#: LoRA target sets (module-name suffixes in the diffusers UNet).
LORA_TARGETS: dict[str, list[str]] = {
    # The diffusers LoRA script's choice: attention projections only.
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    # + transformer in/out projections, feed-forward, resnet convs and time projections.
    "broad": [
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """Training hyperparameters of one model family; explicit :func:`finetune` arguments win.

    A preset per model exists because the values do not transfer: a learning rate that trains a
    4M-parameter CPU model in minutes wrecks SD 1.5, and SD 1.5 needs gradient accumulation and
    checkpointing to fit a GPU that a tiny model does not."""

    name: str
    lr: float  # LoRA learning rate
    full_lr: float  # full fine-tuning learning rate
    steps: int  # optimizer steps (LoRA)
    full_steps: int  # optimizer steps (full)
    rank: int
    lora_targets: tuple[str, ...]
    resolution: int | None  # None: the model's native size (unet.sample_size x vae scale)
    center_crop: bool
    random_flip: bool
    batch_size: int  # per process and micro-batch
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    mixed_precision: str  # "auto" (fp16 on CUDA, no on CPU) | "no" | "fp16" | "bf16"
    snr_gamma: float | None
    caption_dropout: float
    lr_schedule: str
    warmup: int
    ema: float  # EMA decay of the trained weights; 0: none
    cache_latents: bool  # encode every image once (CPU tensor of posteriors); small datasets only
    save_every: int


#: Stable Diffusion 1.5: diffusers' ``train_text_to_image_lora.py`` recipe (lr 1e-4, rank 4,
#: attention targets, 512 px centre crop, batch 1 x 4 accumulated, gradient checkpointing,
#: fp16 on CUDA). Full fine-tuning: lr 1e-5 as in diffusers' text_to_image README.
SD15 = Preset(
    name="sd15", lr=1e-4, full_lr=1e-5, steps=1500, full_steps=15000, rank=4,
    lora_targets=tuple(LORA_TARGETS["attn"]), resolution=512, center_crop=True, random_flip=False,
    batch_size=1, gradient_accumulation_steps=4, gradient_checkpointing=True, mixed_precision="auto",
    snr_gamma=None, caption_dropout=0.0, lr_schedule="constant", warmup=0, ema=0.0, cache_latents=False,
    save_every=500,
)  # fmt: skip


#: The CPU test world (its tiny model, ``testworld/tracemark_sim/base_model``): 800 LoRA steps (26
#: epochs of 1000 samples; the tiny UNet step with the broad LoRA is 0.63 s on 2 cores, so 1000
#: steps took 10.5 min, over the 10-minute budget, docs/sim.md) at lr 2e-3, rank 16 on the broad
#: targets, 1000 full steps at 2e-4, batch 32, no accumulation, latents cached once.
TINY = Preset(
    name="tiny", lr=2e-3, full_lr=2e-4, steps=800, full_steps=1000, rank=16,
    lora_targets=tuple(LORA_TARGETS["broad"]), resolution=None, center_crop=True, random_flip=False,
    batch_size=32, gradient_accumulation_steps=1, gradient_checkpointing=False, mixed_precision="no",
    snr_gamma=None, caption_dropout=0.1, lr_schedule="constant", warmup=0, ema=0.0, cache_latents=True,
    save_every=500,
)  # fmt: skip

#: The presets by name (``--preset``).
PRESETS: dict[str, Preset] = {"sd15": SD15, "tiny": TINY}

#: Largest UNet ``sample_size`` (latent side) that :func:`preset_for_base` treats as a tiny CPU model
#: (the CPU test model's is 16; SD 1.x's is 64).
TINY_MAX_SAMPLE_SIZE = 32


def preset_for_base(base, name: str = "auto") -> Preset:
    """The preset called ``name``; ``auto``: :data:`TINY` for a base whose UNet ``sample_size`` is at
    most :data:`TINY_MAX_SAMPLE_SIZE` (the CPU test world), else :data:`SD15` (a real model, or a
    single-file checkpoint whose size cannot be read without loading it)."""
    from tracemark.errors import TracemarkError

    if name != "auto":
        if name not in PRESETS:
            raise TracemarkError(f"preset must be one of auto, {', '.join(PRESETS)}, got {name!r}", params=("preset",))
        return PRESETS[name]
    cfg = Path(base) / "unet" / "config.json"
    if not cfg.is_file():
        return SD15
    try:
        size = json.loads(cfg.read_text(encoding="utf-8")).get("sample_size")
    except (OSError, ValueError, AttributeError) as exc:
        raise TracemarkError(f"{cfg}: cannot read the UNet config ({exc})") from None
    if isinstance(size, (list, tuple)):
        size = max(size) if size else None
    return TINY if isinstance(size, int) and size <= TINY_MAX_SAMPLE_SIZE else SD15


def base_or_default(base, say=None) -> Path:
    """``base``, or the default base model an installed distribution declares
    (:func:`tracemark.plugins.default_base`: the CPU test world's tiny model where it is installed);
    ``say`` is told (one line) which model that is and that real models need a base."""
    from tracemark.plugins import default_base

    if base is not None:
        return Path(base)
    path, provider = default_base()
    if say is not None:
        say(f"note: no --base: using the default base model of {provider} ({path}); for a real model pass "
            "--base MODEL_DIR (e.g. a Stable Diffusion 1.5 diffusers folder)")
    return path


@dataclass
class RunConfig:
    """Everything one training run depends on (written to ``training.json``)."""

    method: str  # "pretrain" | "full" | "lora"
    data_dir: str
    out_dir: str
    base: str | None
    steps: int
    lr: float
    batch_size: int
    seed: int
    warmup: int
    lr_schedule: str
    ema: float
    rank: int
    lora_alpha: float
    lora_targets: list[str] = field(default_factory=list)
    caption_dropout: float = 0.1
    flip: bool = False
    train_text_encoder: bool = False
    save_every: int = 500
    mixed_precision: str = "no"
    unet_channels: list[int] = field(default_factory=list)  # pretrain only; empty: TinyConfig's default
    vae: str | None = None  # pretrain only: folder of a trained AutoencoderKL (the test world's VAE trainer)
    tokenizer: str | None = None  # pretrain only: tokenizer source (default: the committed base's)
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None
    resolution: int | None = None
    cache_latents: bool = False
    caption_column: str | None = None  # None: found in the metadata (tracemark.io.dataset.load_dataset)
    image_column: str | None = None

    def resume_key(self) -> dict:
        """Settings that must match for ``resume`` to continue a run."""
        keys = ("method", "base", "batch_size", "seed", "rank", "lora_alpha", "lora_targets", "train_text_encoder")
        # (optional keys: checkpoints from before a field existed have its default)
        if self.unet_channels:
            keys += ("unet_channels",)
        if self.vae:
            keys += ("vae",)
        if self.gradient_accumulation_steps != 1:
            keys += ("gradient_accumulation_steps",)
        if self.resolution is not None:
            keys += ("resolution",)
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------------------------
# Data: a streaming imagefolder


def read_imagefolder(data_dir: Path, caption_column: str | None = None,
                     image_column: str | None = None) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an imagefolder dataset (metadata.jsonl or metadata.csv), read
    with the given columns or the ones found (as diffusers' --caption_column / --image_column)."""
    from tracemark.io.dataset import load_samples
    from tracemark.errors import TracemarkError

    if not Path(data_dir).is_dir():
        raise TracemarkError(f"{data_dir}: data folder not found")
    return [(Path(s.path), s.text) for s in load_samples(data_dir, caption_column, image_column)]


def load_image(path, resolution: int) -> torch.Tensor:
    """One image as a uint8 tensor 3 x R x R (shorter side resized to R, centre crop)."""
    from PIL import Image

    from tracemark.errors import TracemarkError
    from tracemark.io.imaging import cover_crop

    try:
        with Image.open(path) as im:
            arr = np.asarray(cover_crop(im.convert("RGB"), resolution, resolution), dtype=np.uint8)
    except OSError as exc:
        raise TracemarkError(f"{path}: cannot read image ({exc})") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_images(paths, resolution: int) -> torch.Tensor:
    """Images as a uint8 tensor N x 3 x R x R (for small evaluation sets, not training data)."""
    out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = load_image(p, resolution)
    return out


class ImageCaptionDataset(torch.utils.data.Dataset):
    """An imagefolder read lazily: ``ds[i]`` opens image ``i`` only then (memory: one batch).

    Items are dicts ``{"index", "caption", "pixels"}`` (uint8 3 x R x R); with ``pixels=False``
    the image is not read (training from cached latents needs only the index and caption)."""

    def __init__(self, data_dir, resolution: int, pixels: bool = True, caption_column: str | None = None,
                 image_column: str | None = None):
        self.rows = read_imagefolder(Path(data_dir), caption_column, image_column)
        self.resolution = resolution
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        path, caption = self.rows[i]
        item = {"index": i, "caption": caption}
        if self.pixels:
            item["pixels"] = load_image(path, self.resolution)
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of dataset items into one batch (captions stay a list of strings)."""
    batch = {"index": torch.tensor([it["index"] for it in items]), "caption": [it["caption"] for it in items]}
    if items and "pixels" in items[0]:
        batch["pixels"] = torch.stack([it["pixels"] for it in items])
    return batch


class StepBatchSampler(torch.utils.data.Sampler):
    """Index lists of micro-batches ``start .. end-1``: consecutive slices of seeded per-epoch
    permutations, a pure function of (seed, micro-batch number), so a resumed run and an
    uninterrupted one see the same batches. accelerate shards it across processes."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int):
        self.n, self.batch_size, self.seed, self.start, self.end = n, batch_size, seed, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        for m in range(self.start, self.end):
            yield _batch_indices(self.n, self.batch_size, m, self.seed).tolist()


def _batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of micro-batch ``step``: consecutive slices of seeded per-epoch permutations."""
    start = step * batch
    idx: list[int] = []
    while len(idx) < batch:
        epoch, offset = divmod(start + len(idx), n)
        g = torch.Generator().manual_seed(_mix(seed, epoch, 0x5EED))
        perm = torch.randperm(n, generator=g)
        idx.extend(perm[offset : offset + batch - len(idx)].tolist())
    return torch.tensor(idx)


def _mix(*xs: int) -> int:
    h = hashlib.blake2b(repr(xs).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class CaptionEncoder:
    """Caption embeddings per batch; with a frozen text encoder, an LRU cache on the CPU.

    Each caption is encoded on its own, so an embedding does not depend on which batch first
    asked for it (the cache would otherwise make runs depend on batch composition). The cache
    holds ``cache_size`` captions, by default as many as fit in ``cache_bytes`` (256 MB: ~2,000
    SD 1.5 captions in fp16, ~13,000 tiny-world captions in fp32)."""

    def __init__(self, tokenizer, text_encoder, device, dtype, trainable: bool, cache_size: int | None = None,
                 cache_bytes: int = 256 << 20):  # fmt: skip
        self.tokenizer, self.text_encoder, self.device, self.dtype = tokenizer, text_encoder, device, dtype
        self.trainable, self.cache_size, self.cache_bytes = trainable, cache_size, cache_bytes
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def ids(self, captions: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids  # fmt: skip

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if self.trainable:
            return self.text_encoder(self.ids(captions).to(self.device))[0]
        out = []
        for c in captions:
            e = self.cache.get(c)
            if e is None:
                with torch.no_grad():
                    e = self.text_encoder(self.ids([c]).to(self.device))[0][0].to(self.dtype).cpu()
                self.cache[c] = e
                if self.cache_size is None:
                    self.cache_size = max(1, self.cache_bytes // (e.numel() * e.element_size()))
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            else:
                self.cache.move_to_end(c)
            out.append(e)
        return torch.stack(out).to(self.device)


# ----------------------------------------------------------------------------------------------
# EMA of trainable parameters, progress, checkpoint helpers


class EMA:
    def __init__(self, params, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self, params, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_to(self, params) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, sd):
        self.decay = sd["decay"]
        self.shadow = [t.clone() for t in sd["shadow"]]


class Progress:
    """A rich progress bar (steps, loss, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool = True, log_every: int = 100):
        self.total, self.start, self.log_every = total, start, log_every
        self.t0 = time.time()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total, completed=start, loss=float("nan"))
        elif enabled:
            print(f"{desc}: steps {start}/{total}", flush=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss)
        elif self.enabled and (step % self.log_every == 0 or step == self.total):
            done = step - self.start
            rate = (time.time() - self.t0) / max(done, 1)
            eta = rate * (self.total - step)
            print(
                f"step {step}/{self.total} loss {loss:.4f} {rate:.3f} s/step "
                f"elapsed {time.time() - self.t0:.0f}s ETA {eta:.0f}s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(model):
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------
# The loop


def run_training(rc: RunConfig, *, pipe=None, progress: bool = True, resume: bool = False,
                 num_threads: int | None = None, log_every: int = 100) -> Path:  # fmt: skip
    """Train as described by ``rc``; returns the output folder. See the module docstring.

    ``pipe``: an in-memory pipeline to train (the test world's fresh base); default: ``rc.base``."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from tracemark.errors import TracemarkError

    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    out = Path(rc.out_dir)
    ckpt_path = out / CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise TracemarkError(f"{ckpt_path}: no checkpoint to resume from")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved, mine = state["run_config"], rc.resume_key()
        keys = list(mine) + [k for k in saved if k not in mine]  # (a key saved but now at its default counts)
        diff = {k: (saved.get(k), getattr(rc, k, None)) for k in keys if saved.get(k) != getattr(rc, k, None)}
        if diff:
            raise TracemarkError(f"{ckpt_path}: cannot resume, settings differ (saved, now): {diff}")
    elif out.exists() and any(out.iterdir()):
        raise TracemarkError(f"{out}: already exists and is not empty (pass resume to continue a run)",
                             params=("resume",))

    mixed = rc.mixed_precision
    if mixed == "auto":
        mixed = "fp16" if torch.cuda.is_available() else "no"
    accelerator = Accelerator(gradient_accumulation_steps=rc.gradient_accumulation_steps, mixed_precision=mixed)
    device = accelerator.device
    n_proc, rank_i = accelerator.num_processes, accelerator.process_index

    # --- model
    if pipe is None:
        if rc.base is None:
            raise TracemarkError("fine-tuning needs a base model folder")
        pipe = load_pipeline(rc.base)
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = rc.resolution or int(unet.config.sample_size) * pipe.vae_scale_factor
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    vae.requires_grad_(False)
    train_te = rc.method == "pretrain" or rc.train_text_encoder
    text_encoder.requires_grad_(train_te)
    if rc.method == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        if weight_dtype != torch.float32:  # frozen weights in half precision, as diffusers does
            unet.to(device, dtype=weight_dtype)
        torch.manual_seed(rc.seed)
        lcfg = LoraConfig(
            r=rc.rank, lora_alpha=rc.lora_alpha, init_lora_weights="gaussian", target_modules=rc.lora_targets
        )
        try:
            unet.add_adapter(lcfg)
        except ValueError as exc:
            raise TracemarkError(f"LoRA targets {rc.lora_targets} do not match this UNet ({exc})") from exc
        if train_te:
            text_encoder.requires_grad_(False)
            text_encoder.add_adapter(
                LoraConfig(r=rc.rank, lora_alpha=rc.lora_alpha, init_lora_weights="gaussian",
                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])  # fmt: skip
            )
        if weight_dtype != torch.float32:
            from diffusers.training_utils import cast_training_params

            cast_training_params([unet, text_encoder] if train_te else unet, dtype=torch.float32)
    else:
        unet.requires_grad_(True)
    if rc.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            text_encoder.gradient_checkpointing_enable()
    unet.train()
    text_encoder.train(train_te)
    vae.to(device) if weight_dtype == torch.float32 else vae.to(device, dtype=weight_dtype)
    if not train_te:
        text_encoder.to(device) if weight_dtype == torch.float32 else text_encoder.to(device, dtype=weight_dtype)

    params = [p for p in unet.parameters() if p.requires_grad]
    if train_te:
        params += [p for p in text_encoder.parameters() if p.requires_grad]
    named_trainable = trainable_names(unet, text_encoder if train_te else None)

    # --- data (streamed; optionally every posterior once, as diffusers' --cache_latents)
    dataset = ImageCaptionDataset(rc.data_dir, resolution, caption_column=rc.caption_column,
                                  image_column=rc.image_column)
    if len(dataset) == 0:
        raise TracemarkError(f"{rc.data_dir}: dataset has no samples")
    latent_cache = None
    if rc.cache_latents:
        latent_cache = _encode_all(vae, dataset, device, weight_dtype, flip=rc.flip)
        dataset.pixels = False

    # --- optimizer, schedule, accelerate (the scheduler steps once per process per optimizer step)
    optimizer = torch.optim.AdamW(params, lr=rc.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_sched = get_scheduler(rc.lr_schedule, optimizer, num_warmup_steps=rc.warmup * n_proc,
                             num_training_steps=rc.steps * n_proc)  # fmt: skip
    if train_te:
        unet, text_encoder, optimizer, lr_sched = accelerator.prepare(unet, text_encoder, optimizer, lr_sched)
    else:
        unet, optimizer, lr_sched = accelerator.prepare(unet, optimizer, lr_sched)
    ema = EMA(params, rc.ema) if rc.ema > 0 else None
    # (after prepare: a trained text encoder must be called through its DDP wrapper to sync gradients)
    captions = CaptionEncoder(tokenizer, text_encoder, device, weight_dtype, trainable=train_te)

    step = 0
    loss_hist: list[float] = []
    if state is not None:
        load_trainable(unet, text_encoder if train_te else None, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        loss_hist = list(state.get("loss_hist", []))

    # micro-batches are numbered globally: optimizer step s, accumulation k, process r ->
    # (s * acc + k) * n_proc + r; the prepared loader hands process r every n_proc-th batch
    acc = rc.gradient_accumulation_steps
    sampler = StepBatchSampler(len(dataset), rc.batch_size, rc.seed, step * acc * n_proc, rc.steps * acc * n_proc)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    loader = accelerator.prepare(loader)

    def save_checkpoint(at: int) -> None:
        if not accelerator.is_main_process:
            return
        atomic_torch_save(
            {
                "step": at,
                "run_config": rc.resume_key(),
                "weights": trainable_state(unet, text_encoder if train_te else None),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "loss_hist": loss_hist,
            },
            ckpt_path,
        )

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    bar = Progress(rc.steps, step, f"{rc.method} {out.name}", enabled=progress and accelerator.is_main_process,
                   log_every=log_every)  # fmt: skip
    running = None
    micro = step * acc
    step_loss = 0.0
    start_step = step
    dirty = False  # True while the weights are ahead of ``step`` (between optimizer.step and step += 1)
    try:
        for batch in loader:
            m = micro * n_proc + rank_i
            micro += 1
            idx = batch["index"]
            bsz = len(idx)
            g = torch.Generator().manual_seed(_mix(rc.seed, m))
            flip = (torch.rand(bsz, generator=g) < 0.5) if rc.flip else torch.zeros(bsz, dtype=torch.bool)
            drop = torch.rand(bsz, generator=g) < rc.caption_dropout
            with torch.no_grad():
                if latent_cache is not None:
                    mean, std = latent_cache
                    o, i_cpu = flip.long(), idx.cpu()
                    mean, std = mean[i_cpu, o], std[i_cpu, o]
                else:
                    x = batch["pixels"].float().div_(127.5).sub_(1.0)
                    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
                    dist = vae.encode(x.to(device, weight_dtype)).latent_dist
                    mean, std = dist.mean, dist.std
            noise_cpu = torch.randn((bsz, *mean.shape[1:]), generator=g)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
            eps = torch.randn((bsz, *mean.shape[1:]), generator=g)
            with torch.no_grad():
                latents = mean + std * eps.to(mean.device, mean.dtype)
                latents = (latents.to(device) - shift) * scaling
            noise = noise_cpu.to(device, latents.dtype)
            t = t.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
            caps = [("" if d else c) for c, d in zip(batch["caption"], drop.tolist())]

            with accelerator.accumulate(unet):
                cond = captions(caps)
                pred = unet(noisy, t, cond).sample
                loss = _loss(pred, target, t, noise_scheduler, rc.snr_gamma)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                    dirty = True
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += float(loss.detach()) / acc
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(params, step)
            step += 1
            dirty = False
            lv, step_loss = step_loss, 0.0
            if not math.isfinite(lv):
                raise TracemarkError(f"training diverged at step {step} (loss {lv}); lower lr", params=("lr",))
            running = lv if running is None else 0.98 * running + 0.02 * lv
            if step % 50 == 0 or step == rc.steps:
                loss_hist.append(round(running, 5))
            bar.update(step, running)
            if rc.save_every and step % rc.save_every == 0 and step < rc.steps:
                save_checkpoint(step)
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM: keep the steps done since the last checkpoint (``resume`` continues from
        # them exactly), unless the interrupt fell inside an optimizer step (weights ahead of ``step``)
        if not dirty and step > start_step and n_proc == 1:
            save_checkpoint(step)
        raise
    finally:
        bar.close()
    elapsed = time.time() - t_start
    accelerator.wait_for_everyone()
    save_checkpoint(step)
    if not accelerator.is_main_process:
        return out

    # --- final weights (EMA weights if EMA was used)
    unet_u, te_u = _unwrap(accelerator.unwrap_model(unet)), _unwrap(accelerator.unwrap_model(text_encoder))
    if ema is not None:
        ema.copy_to(params)
    info = {
        "method": rc.method,
        "config": asdict(rc),
        "steps_done": step,
        "seconds_this_session": round(elapsed, 1),
        "final_loss": running,
        "trainable_params": sum(p.numel() for p in params),
        "loss_every_50_steps": loss_hist,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "num_processes": n_proc,
        "trainable_modules": len(named_trainable),
    }
    if rc.method == "lora":
        save_lora(unet_u, te_u if train_te else None, out)
    else:
        for mod in (unet_u, te_u, pipe.vae):
            if mod.dtype != torch.float32:
                mod.to(torch.float32)
        pipe.unet, pipe.text_encoder = unet_u, te_u
        save_pipeline(pipe, out)
    (out / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def _loss(pred, target, t, noise_scheduler, snr_gamma: float | None) -> torch.Tensor:
    """MSE, or min-SNR-gamma weighted MSE (Hang et al. 2023, as diffusers' ``--snr_gamma``)."""
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t)
    w = torch.stack([snr, snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    w = w / snr if noise_scheduler.config.prediction_type == "epsilon" else w / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (loss * w).mean()


@torch.no_grad()
def _encode_all(vae, dataset: ImageCaptionDataset, device, dtype, flip: bool, batch: int = 128):
    """Posterior mean and std of every image, read batch by batch from ``dataset``: CPU tensors
    N x O x C x h x w (O = 2 with flips)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate)
    means, stds = [], []
    for b in loader:
        x = b["pixels"].float().div_(127.5).sub_(1.0)
        views = [x, x.flip(-1)] if flip else [x]
        ms, ss = [], []
        for v in views:
            d = vae.encode(v.to(device, dtype)).latent_dist
            ms.append(d.mean.cpu())
            ss.append(d.std.cpu())
        means.append(torch.stack(ms, 1))
        stds.append(torch.stack(ss, 1))
    return torch.cat(means), torch.cat(stds)


def trainable_names(unet, text_encoder) -> list[str]:
    names = [f"unet.{n}" for n, p in unet.named_parameters() if p.requires_grad]
    if text_encoder is not None:
        names += [f"text_encoder.{n}" for n, p in text_encoder.named_parameters() if p.requires_grad]
    return names


def trainable_state(unet, text_encoder) -> dict[str, torch.Tensor]:
    sd = {f"unet.{n}": p.detach().cpu().clone() for n, p in _unwrap(unet).named_parameters() if p.requires_grad}
    if text_encoder is not None:
        te = _unwrap(text_encoder)
        sd.update({f"text_encoder.{n}": p.detach().cpu().clone() for n, p in te.named_parameters() if p.requires_grad})
    return sd


@torch.no_grad()
def load_trainable(unet, text_encoder, sd: dict[str, torch.Tensor]) -> None:
    """Copy checkpointed trainable weights (``unet.*`` / ``text_encoder.*``) into the models."""
    from tracemark.errors import TracemarkError

    mods = {"unet": dict(_unwrap(unet).named_parameters())}
    if text_encoder is not None:
        mods["text_encoder"] = dict(_unwrap(text_encoder).named_parameters())
    for key, value in sd.items():
        prefix, name = key.split(".", 1)
        p = mods.get(prefix, {}).get(name)
        if p is None or p.shape != value.shape:
            raise TracemarkError(f"checkpoint does not fit the model ({key})")
        p.copy_(value.to(p.device, p.dtype))


def save_lora(unet, text_encoder, out: Path) -> None:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers format) into ``out``."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    # PEFT key format (``...lora_A.weight``), which ``load_lora_weights`` reads natively. Not
    # ``convert_state_dict_to_diffusers``: it rewrites only attention keys to the old
    # ``lora.down`` names, and a file mixing both formats loads without its attention LoRA.
    unet_sd = get_peft_model_state_dict(unet)
    kwargs = {"unet_lora_layers": unet_sd, "unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    if text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = get_peft_model_state_dict(text_encoder)
        kwargs["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config["default"].to_dict()
    tmp = out / f".lora-tmp-{os.getpid()}"
    StableDiffusionPipeline.save_lora_weights(tmp, weight_name=LORA_WEIGHT_NAME, safe_serialization=True, **kwargs)
    os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    tmp.rmdir()


# ----------------------------------------------------------------------------------------------
# Public entry point


def finetune(data_dir, base, out, method: str = "lora", preset: Preset = SD15, *, steps: int | None = None,
             lr: float | None = None, rank: int | None = None, seed: int = 0, batch_size: int | None = None,
             lora_targets: str | list[str] | None = None, lora_alpha: float | None = None, flip: bool | None = None,
             caption_dropout: float | None = None, train_text_encoder: bool = False, save_every: int | None = None,
             resume: bool = False, num_threads: int | None = None, progress: bool = True,
             mixed_precision: str | None = None, ema: float | None = None, log_every: int = 100,
             gradient_accumulation_steps: int | None = None, gradient_checkpointing: bool | None = None,
             resolution: int | None = None, snr_gamma: float | None = None, caption_column: str | None = None,
             image_column: str | None = None) -> Path:  # fmt: skip
    """Fine-tune the pipeline at ``base`` on the imagefolder ``data_dir``; returns ``out``.

    ``method="lora"``: ``out/pytorch_lora_weights.safetensors`` (diffusers format);
    ``method="full"``: the UNet is trained and ``out`` is a complete pipeline folder.
    ``preset``: hyperparameters (default :data:`SD15`); any argument left None takes the preset's.
    ``lora_targets``: a name of :data:`LORA_TARGETS` or a list of module-name suffixes.
    ``resume=True`` continues from ``out/checkpoints/last.pt``.
    ``caption_column`` / ``image_column``: the metadata's columns (default: found in it).
    """
    from tracemark.errors import TracemarkError

    if method not in ("lora", "full"):
        raise TracemarkError(f"method must be lora or full, got {method!r}", params=("method",))
    if not preset.center_crop:
        raise TracemarkError(f"preset {preset.name}: only centre crops are implemented (center_crop=True)")
    targets = list(preset.lora_targets) if lora_targets is None else lora_targets
    if isinstance(targets, str):
        if targets not in LORA_TARGETS:
            raise TracemarkError(f"unknown LoRA target preset {targets!r} (choose: {', '.join(LORA_TARGETS)})")
        targets = LORA_TARGETS[targets]
    lora = method == "lora"
    steps = steps if steps is not None else (preset.steps if lora else preset.full_steps)
    if steps <= 0:
        raise TracemarkError(f"steps must be positive, got {steps}", params=("steps",))
    rank = preset.rank if rank is None else rank
    rc = RunConfig(
        method=method, data_dir=str(data_dir), out_dir=str(out), base=str(base), steps=steps,
        lr=lr if lr is not None else (preset.lr if lora else preset.full_lr),
        batch_size=batch_size or preset.batch_size, seed=seed, warmup=preset.warmup, lr_schedule=preset.lr_schedule,
        ema=preset.ema if ema is None else ema, rank=rank if lora else 0,
        lora_alpha=float(lora_alpha or rank) if lora else 0, lora_targets=list(targets) if lora else [],
        caption_dropout=preset.caption_dropout if caption_dropout is None else caption_dropout,
        flip=preset.random_flip if flip is None else flip, train_text_encoder=train_text_encoder,
        save_every=preset.save_every if save_every is None else save_every,
        mixed_precision=mixed_precision or preset.mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps or preset.gradient_accumulation_steps,
        gradient_checkpointing=preset.gradient_checkpointing if gradient_checkpointing is None
        else gradient_checkpointing,
        snr_gamma=preset.snr_gamma if snr_gamma is None else snr_gamma,
        resolution=resolution or preset.resolution, cache_latents=preset.cache_latents,
        caption_column=caption_column, image_column=image_column,
    )  # fmt: skip
    return run_training(rc, progress=progress, resume=resume, num_threads=num_threads, log_every=log_every)

