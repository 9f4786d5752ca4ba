"""One text-to-image training loop for pretraining and fine-tuning (the diffusers recipe).

Read top to bottom, it is diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``
in miniature:

1. load the pipeline (or build a fresh tiny one for pretraining) and the imagefolder dataset;
2. each step: a batch of images in [-1, 1] (optional random horizontal flip) -> ``vae.encode`` ->
   ``latent_dist.sample() * scaling_factor``; random timesteps; ``noise_scheduler.add_noise``;
   the target is ``noise_scheduler.get_velocity`` for ``v_prediction`` (else the noise);
   captions are replaced by "" with probability 0.1 (so classifier-free guidance works);
   MSE between the UNet's prediction and the target; AdamW; gradient clipping at 1.0;
3. save: ``method="full"`` writes a whole pipeline folder, ``method="lora"`` writes
   ``pytorch_lora_weights.safetensors`` (diffusers format, loads with
   ``pipe.load_lora_weights(dir)``), pretraining writes a pipeline folder.

Device placement, and mixed precision if asked, go through ``accelerate.Accelerator``: the same
code runs a real SD 1.x checkpoint on a GPU. Every random draw of step ``s`` comes from a generator
seeded with ``(seed, s)`` and batches follow a seeded permutation per epoch, so a run resumed from
its checkpoint (``resume=True``) continues exactly as if it had not been interrupted.

Checkpoints: ``<out>/checkpoints/last.pt`` (trainable weights, optimizer, LR schedule, EMA, step),
written atomically every ``save_every`` steps and at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tracemark.diffusion.loading import LORA_WEIGHT_NAME  # noqa: E402  (one name for writer and loader)
TRAINING_INFO = "training.json"

#: LoRA target presets (module-name suffixes in the diffusers UNet).
LORA_TARGETS: dict[str, list[str]] = {
    # The diffusers LoRA script's choice: attention projections only.
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    # + transformer in/out projections, feed-forward, resnet convs and time projections.
    "broad": [
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    ],
}  # fmt: skip
#: Default LoRA preset for this world (see docs/sim.md for the measurement behind it).
DEFAULT_LORA_TARGETS = "broad"

DEFAULTS = {
    # steps, lr, batch size, warmup, schedule, EMA decay
    "pretrain": dict(steps=5000, lr=1e-3, batch_size=32, warmup=200, lr_schedule="cosine", ema=0.999),
    "full": dict(steps=1000, lr=2e-4, batch_size=32, warmup=0, lr_schedule="constant", ema=0.0),
    # 800 steps (26 epochs of 1000 samples): the new base's UNet step with the broad LoRA is
    # 0.63 s on 2 cores, so 1000 steps took 10.5 min, over the 10-minute budget (docs/sim.md).
    "lora": dict(steps=800, lr=2e-3, batch_size=32, warmup=0, lr_schedule="constant", ema=0.0),
}
DEFAULT_RANK = 16


@dataclass
class RunConfig:
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
    vae: str | None = None  # pretrain only: folder of a trained AutoencoderKL (tracemark.sim.vae)
    tokenizer: str | None = None  # pretrain only: tokenizer source (default: the committed base's)

    def resume_key(self) -> dict:
        """Settings that must match for ``resume`` to continue a run."""
        keys = ("method", "base", "batch_size", "seed", "rank", "lora_alpha", "lora_targets", "train_text_encoder")
        if self.unet_channels:  # (checkpoints from before the field existed have the default)
            keys += ("unet_channels",)
        if self.vae:
            keys += ("vae",)
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------------------------
# Data


def _read_imagefolder(data_dir: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an imagefolder dataset (metadata.jsonl or metadata.csv)."""
    from tracemark.errors import TracemarkError

    try:
        from tracemark.dataset import load_samples
    except ImportError:  # pragma: no cover - the core package provides it
        load_samples = None
    if not data_dir.is_dir():
        raise TracemarkError(f"{data_dir}: data folder not found")
    if load_samples is not None:
        return [(Path(s.path), s.text) for s in load_samples(data_dir)]
    rows: list[tuple[Path, str]] = []  # pragma: no cover - minimal fallback reader
    meta = data_dir / "metadata.jsonl"
    if meta.is_file():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append((data_dir / r["file_name"], r.get("text", "")))
    elif (data_dir / "metadata.csv").is_file():
        import csv

        with open(data_dir / "metadata.csv", newline="", encoding="utf-8") as f:
            rows = [(data_dir / r["file_name"], r.get("text", "")) for r in csv.DictReader(f)]
    else:
        raise TracemarkError(f"{data_dir}: no metadata.jsonl or metadata.csv")
    return rows


def load_images(paths, resolution: int) -> torch.Tensor:
    """Images as a uint8 tensor N x 3 x R x R (shorter side resized to R, centre crop)."""
    from PIL import Image

    from tracemark.errors import TracemarkError

    out = torch.empty((len(paths), 3, resolution, resolution), dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (resolution, resolution):
                    w, h = im.size
                    s = resolution / min(w, h)
                    im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
                    w, h = im.size
                    left, top = (w - resolution) // 2, (h - resolution) // 2
                    im = im.crop((left, top, left + resolution, top + resolution))
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise TracemarkError(f"{p}: cannot read image ({exc})") from exc
        out[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return out


def _batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of step ``step``'s batch: consecutive slices of seeded per-epoch permutations."""
    start = step * batch
    idx = []
    while len(idx) < batch:
        epoch, offset = divmod(start + len(idx), n)
        g = torch.Generator().manual_seed(_mix(seed, epoch, 0x5EED))
        perm = torch.randperm(n, generator=g)
        idx.extend(perm[offset : offset + batch - len(idx)].tolist())
    return torch.tensor(idx)


def _mix(*xs: int) -> int:
    h = hashlib.blake2b(repr(xs).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------------------------
# EMA of trainable parameters


class _EMA:
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


# ----------------------------------------------------------------------------------------------
# Progress


class _Progress:
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
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
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


# ----------------------------------------------------------------------------------------------
# The loop


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(model):
    return getattr(model, "module", model)


def run_training(rc: RunConfig, *, progress: bool = True, resume: bool = False, num_threads: int | None = None,
                 new_pipeline_seed: int | None = None, log_every: int = 100) -> Path:  # fmt: skip
    """Train as described by ``rc``; returns the output folder. See the module docstring."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    from tracemark.errors import TracemarkError
    from tracemark.sim.pipeline import load_pipeline, new_pipeline, save_pipeline

    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    out = Path(rc.out_dir)
    ckpt_path = out / "checkpoints" / "last.pt"
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise TracemarkError(f"{ckpt_path}: no checkpoint to resume from")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = state["run_config"]
        mine = rc.resume_key()
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            raise TracemarkError(f"{ckpt_path}: cannot resume, settings differ (saved, now): {diff}")
    elif out.exists() and any(out.iterdir()):
        raise TracemarkError(f"{out}: already exists and is not empty (use --resume to continue a run)")

    accelerator = Accelerator(mixed_precision=rc.mixed_precision)
    device = accelerator.device

    # --- model
    if rc.method == "pretrain" and rc.base is None:
        from tracemark.sim.pipeline import TinyConfig

        cfg = TinyConfig(unet_channels=tuple(rc.unet_channels)) if rc.unet_channels else None
        pipe = new_pipeline(seed=rc.seed if new_pipeline_seed is None else new_pipeline_seed, config=cfg, vae=rc.vae,
                            tokenizer=rc.tokenizer)
    else:
        if rc.base is None:
            raise TracemarkError("fine-tuning needs a base model folder")
        pipe = load_pipeline(rc.base)
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = int(unet.config.sample_size) * pipe.vae_scale_factor
    scaling = float(vae.config.scaling_factor)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    vae.requires_grad_(False)
    train_te = rc.method == "pretrain" or rc.train_text_encoder
    text_encoder.requires_grad_(train_te)
    if rc.method == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
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
    else:
        unet.requires_grad_(True)
    unet.train()
    text_encoder.train(train_te)
    vae.to(device) if weight_dtype == torch.float32 else vae.to(device, dtype=weight_dtype)
    if not train_te:
        text_encoder.to(device) if weight_dtype == torch.float32 else text_encoder.to(device, dtype=weight_dtype)

    params = [p for p in unet.parameters() if p.requires_grad]
    if train_te:
        params += [p for p in text_encoder.parameters() if p.requires_grad]
    named_trainable = _trainable_names(unet, text_encoder if train_te else None)

    # --- data
    data_dir = Path(rc.data_dir)
    rows = _read_imagefolder(data_dir)
    if not rows:
        raise TracemarkError(f"{data_dir}: dataset has no samples")
    images = load_images([p for p, _ in rows], resolution)
    # The VAE is frozen: encode every image once (both orientations when flipping) and draw
    # ``mean + std * noise`` per step, as ``latent_dist.sample()`` would (diffusers' DreamBooth
    # scripts call this --cache_latents). Saves the encoder's forward pass at every step.
    latent_cache = _encode_all(vae, images, device, weight_dtype, flip=rc.flip)
    del images
    captions = [c for _, c in rows]
    uniq = sorted(set(captions) | {""})
    pos = {c: i for i, c in enumerate(uniq)}
    cap_index = torch.tensor([pos[c] for c in captions])
    empty_index = pos[""]
    ids = tokenizer(uniq, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    cached = None
    if not train_te:  # frozen text encoder: encode every distinct caption once
        with torch.no_grad():
            cached = torch.cat(
                [text_encoder(ids[i : i + 256].to(device))[0].to(weight_dtype) for i in range(0, len(uniq), 256)]
            )

    # --- optimizer, schedule, accelerate
    optimizer = torch.optim.AdamW(params, lr=rc.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_sched = get_scheduler(rc.lr_schedule, optimizer, num_warmup_steps=rc.warmup, num_training_steps=rc.steps)
    if train_te:
        unet, text_encoder, optimizer, lr_sched = accelerator.prepare(unet, text_encoder, optimizer, lr_sched)
    else:
        unet, optimizer, lr_sched = accelerator.prepare(unet, optimizer, lr_sched)
    ema = _EMA(params, rc.ema) if rc.ema > 0 else None

    step = 0
    loss_hist: list[float] = []
    if state is not None:
        _load_trainable(unet, text_encoder if train_te else None, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        loss_hist = list(state.get("loss_hist", []))

    def save_checkpoint(at: int) -> None:
        _atomic_torch_save(
            {
                "step": at,
                "run_config": rc.resume_key(),
                "weights": _trainable_state(unet, text_encoder if train_te else None),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "loss_hist": loss_hist,
            },
            ckpt_path,
        )

    out.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    t_start = time.time()
    bar = _Progress(rc.steps, step, f"{rc.method} {out.name}", enabled=progress, log_every=log_every)
    running = None
    try:
        while step < rc.steps:
            g = torch.Generator().manual_seed(_mix(rc.seed, step))
            idx = _batch_indices(n, rc.batch_size, step, rc.seed)
            flip = (torch.rand(len(idx), generator=g) < 0.5) if rc.flip else torch.zeros(len(idx), dtype=torch.bool)
            drop = torch.rand(len(idx), generator=g) < rc.caption_dropout
            cidx = torch.where(drop, torch.full_like(cap_index[idx], empty_index), cap_index[idx])
            mean, std = latent_cache
            noise_cpu = torch.randn((len(idx), *mean.shape[2:]), generator=g)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
            eps = torch.randn((len(idx), *mean.shape[2:]), generator=g)

            with torch.no_grad():
                o = flip.long().to(mean.device)
                i_dev = idx.to(mean.device)
                latents = mean[i_dev, o] + std[i_dev, o] * eps.to(mean.device, mean.dtype)
                latents = (latents.to(device) - shift) * scaling
            noise = noise_cpu.to(device, latents.dtype)
            t = t.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise

            with accelerator.accumulate(unet):
                if cached is not None:
                    cond = cached[cidx.to(device)]
                else:
                    cond = text_encoder(ids[cidx].to(device))[0]
                pred = unet(noisy, t, cond).sample
                loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params, step)
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise TracemarkError(f"training diverged at step {step} (loss {lv}); lower --lr")
            running = lv if running is None else 0.98 * running + 0.02 * lv
            if step % 50 == 0 or step == rc.steps:
                loss_hist.append(round(running, 5))
            bar.update(step, running)
            if rc.save_every and step % rc.save_every == 0 and step < rc.steps:
                save_checkpoint(step)
    finally:
        bar.close()
    elapsed = time.time() - t_start
    save_checkpoint(step)

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
        "trainable_modules": len(named_trainable),
    }
    if rc.method == "lora":
        _save_lora(unet_u, te_u if train_te else None, out)
    else:
        for m in (unet_u, te_u, pipe.vae):
            if m.dtype != torch.float32:
                m.to(torch.float32)
        pipe.unet, pipe.text_encoder = unet_u, te_u
        save_pipeline(pipe, out)
    (out / TRAINING_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


@torch.no_grad()
def _encode_all(vae, images: torch.Tensor, device, dtype, flip: bool, batch: int = 128):
    """Posterior mean and std of every image: tensors N x O x C x h x w (O = 2 with flips)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].float().div_(127.5).sub_(1.0)
        views = [x, x.flip(-1)] if flip else [x]
        ms, ss = [], []
        for v in views:
            d = vae.encode(v.to(device, dtype)).latent_dist
            ms.append(d.mean.cpu())
            ss.append(d.std.cpu())
        means.append(torch.stack(ms, 1))
        stds.append(torch.stack(ss, 1))
    return torch.cat(means), torch.cat(stds)


def _trainable_names(unet, text_encoder) -> list[str]:
    names = [f"unet.{n}" for n, p in unet.named_parameters() if p.requires_grad]
    if text_encoder is not None:
        names += [f"text_encoder.{n}" for n, p in text_encoder.named_parameters() if p.requires_grad]
    return names


def _trainable_state(unet, text_encoder) -> dict[str, torch.Tensor]:
    sd = {f"unet.{n}": p.detach().cpu().clone() for n, p in _unwrap(unet).named_parameters() if p.requires_grad}
    if text_encoder is not None:
        te = _unwrap(text_encoder)
        sd.update({f"text_encoder.{n}": p.detach().cpu().clone() for n, p in te.named_parameters() if p.requires_grad})
    return sd


@torch.no_grad()
def _load_trainable(unet, text_encoder, sd: dict[str, torch.Tensor]) -> None:
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


def _save_lora(unet, text_encoder, out: Path) -> None:
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


def export_checkpoint(run_dir, dest, use_ema: bool = True) -> Path:
    """Write the pipeline of a pretraining / full fine-tuning run's last checkpoint to ``dest``
    (EMA weights when the run keeps an EMA), e.g. to probe a run that is still going."""
    from tracemark.errors import TracemarkError
    from tracemark.sim.pipeline import load_pipeline, new_pipeline, save_pipeline

    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise TracemarkError(f"{ckpt}: checkpoint not found")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    rc = state["run_config"]
    if rc["method"] == "lora":
        raise TracemarkError(f"{ckpt}: a LoRA run; its weights are written at the end only")
    pipe = new_pipeline(seed=rc["seed"], vae=rc.get("vae"), tokenizer=rc.get("tokenizer")) if rc["base"] is None else load_pipeline(rc["base"])
    weights = state["weights"]
    if use_ema and state.get("ema") is not None:
        weights = dict(zip(weights.keys(), state["ema"]["shadow"]))
    te = pipe.text_encoder if any(k.startswith("text_encoder.") for k in weights) else None
    _load_trainable(pipe.unet, te, weights)
    save_pipeline(pipe, dest)
    return Path(dest)


# ----------------------------------------------------------------------------------------------
# Public entry points


def _resolve(method: str, **given) -> dict:
    d = dict(DEFAULTS[method])
    d.update({k: v for k, v in given.items() if v is not None})
    return d


def pretrain(data_dir, out_dir, steps: int | None = None, *, lr: float | None = None, batch_size: int | None = None,
             seed: int = 0, ema: float | None = None, save_every: int = 500, resume: bool = False,
             num_threads: int | None = None, progress: bool = True, mixed_precision: str = "no",
             log_every: int = 100, unet_channels: list[int] | None = None, vae=None,
             tokenizer=None) -> Path:  # fmt: skip
    """Pretrain a fresh tiny pipeline (UNet + text encoder) on ``data_dir``; writes a pipeline
    folder to ``out_dir`` (EMA weights). ``resume=True`` continues from ``out_dir/checkpoints``.
    ``unet_channels``: UNet block widths (default TinyConfig's), e.g. a second, smaller base.
    ``vae``: folder of a trained ``AutoencoderKL`` (:func:`tracemark.sim.vae.pretrain_vae`;
    default: the committed base's)."""
    d = _resolve("pretrain", steps=steps, lr=lr, batch_size=batch_size, ema=ema)
    if vae is None:  # a second base shares the committed base's VAE, as SD variants share SD's
        from tracemark.sim.pipeline import default_base_path

        if (default_base_path() / "vae" / "config.json").is_file():
            vae = default_base_path() / "vae"
    rc = RunConfig(
        method="pretrain", data_dir=str(data_dir), out_dir=str(out_dir), base=None, steps=d["steps"], lr=d["lr"],
        batch_size=d["batch_size"], seed=seed, warmup=d["warmup"], lr_schedule=d["lr_schedule"], ema=d["ema"],
        rank=0, lora_alpha=0, lora_targets=[], train_text_encoder=True, save_every=save_every,
        mixed_precision=mixed_precision, unet_channels=[int(c) for c in unet_channels or []],
        vae=str(vae) if vae else None, tokenizer=str(tokenizer) if tokenizer else None,
    )  # fmt: skip
    return run_training(rc, progress=progress, resume=resume, num_threads=num_threads, log_every=log_every)


def finetune(data_dir, base, out, method: str = "lora", steps: int | None = None, lr: float | None = None,
             rank: int = DEFAULT_RANK, seed: int = 0, *, batch_size: int | None = None,
             lora_targets: str | list[str] = DEFAULT_LORA_TARGETS, lora_alpha: float | None = None,
             flip: bool = False, caption_dropout: float = 0.1, train_text_encoder: bool = False,
             save_every: int = 500, resume: bool = False, num_threads: int | None = None,
             progress: bool = True, mixed_precision: str = "no", ema: float | None = None,
             log_every: int = 100) -> Path:  # fmt: skip
    """Fine-tune the pipeline at ``base`` on the imagefolder ``data_dir``; returns ``out``.

    ``method="lora"``: ``out/pytorch_lora_weights.safetensors`` (diffusers format);
    ``method="full"``: the UNet is trained and ``out`` is a complete pipeline folder.
    ``lora_targets``: a preset name (``"attn"``, ``"broad"``) or a list of module-name suffixes.
    ``flip``: random horizontal flips (off by default, like diffusers' ``--random_flip``).
    """
    from tracemark.errors import TracemarkError

    if method not in ("lora", "full"):
        raise TracemarkError(f"--method must be lora or full, got {method!r}")
    if isinstance(lora_targets, str):
        if lora_targets not in LORA_TARGETS:
            raise TracemarkError(f"unknown LoRA target preset {lora_targets!r} (choose: {', '.join(LORA_TARGETS)})")
        lora_targets = LORA_TARGETS[lora_targets]
    d = _resolve(method, steps=steps, lr=lr, batch_size=batch_size, ema=ema)
    if d["steps"] <= 0:
        raise TracemarkError(f"--steps must be positive, got {d['steps']}")
    rc = RunConfig(
        method=method, data_dir=str(data_dir), out_dir=str(out), base=str(base), steps=d["steps"], lr=d["lr"],
        batch_size=d["batch_size"], seed=seed, warmup=d["warmup"], lr_schedule=d["lr_schedule"], ema=d["ema"],
        rank=rank if method == "lora" else 0, lora_alpha=float(lora_alpha or rank) if method == "lora" else 0,
        lora_targets=list(lora_targets) if method == "lora" else [], caption_dropout=caption_dropout, flip=flip,
        train_text_encoder=train_text_encoder, save_every=save_every, mixed_precision=mixed_precision,
    )  # fmt: skip
    return run_training(rc, progress=progress, resume=resume, num_threads=num_threads, log_every=log_every)
