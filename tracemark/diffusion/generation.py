"""Generate images from a pipeline (+ optional LoRA) into an imagefolder dataset, reproducibly.

Image ``i`` uses prompt ``prompts[i % len(prompts)]`` and seed ``seed + i`` (its own
``torch.Generator``), so any image can be regenerated alone, whatever the batch size.
``metadata.jsonl`` records ``file_name``, ``text`` (the prompt), ``seed`` and ``prompt_index``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def read_prompts(path) -> list[str]:
    """Prompts from a text file (one per line), a ``.jsonl`` (``text`` or ``prompt`` field) or an
    imagefolder (its captions)."""
    from tracemark.errors import TracemarkError

    p = Path(path)
    if p.is_dir():
        for name in ("metadata.jsonl", "metadata.csv"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise TracemarkError(f"{path}: folder has no metadata.jsonl or metadata.csv")
    if not p.is_file():
        raise TracemarkError(f"{path}: prompts file not found")
    if p.suffix in (".jsonl", ".csv"):  # the dataset reader: same parsing, same one-line errors
        from tracemark.io.dataset import read_rows

        prompts = []
        for lineno, row in read_rows(p):
            prompt = row.get("text", row.get("prompt"))
            if not isinstance(prompt, str):
                raise TracemarkError(f"{p}:{lineno}: no 'text' or 'prompt' string")
            prompts.append(prompt)
    else:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise TracemarkError(f"{p}: no prompts")
    return prompts


def generate(model_dir, prompts, n: int, out_dir, lora=None, seed: int = 0, steps: int = 25,
             guidance: float = 6.0, batch_size: int = 32, pipe=None, progress: bool = False,
             device=None, dtype=None) -> Path:  # fmt: skip
    """Generate ``n`` images (prompts cycled in order) into ``out_dir`` (imagefolder layout).

    ``prompts``: a list of strings or a prompts file (see :func:`read_prompts`). ``pipe``: an
    already loaded pipeline to reuse (then ``model_dir``/``lora`` are only recorded).
    Written to a temporary sibling folder and renamed into place; returns ``out_dir``.
    """
    from tracemark.diffusion.sampling import check_generation_options
    from tracemark.errors import TracemarkError
    from tracemark.diffusion.loading import load_pipeline

    check_generation_options(n=n, steps=steps, guidance=guidance, batch_size=batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64 - n:  # torch: 64-bit
        raise TracemarkError(f"seed must be a non-negative integer below 2**64 - n, got {seed}", params=("seed",))
    if isinstance(prompts, (str, os.PathLike)):
        prompts = read_prompts(prompts)
    prompts = list(prompts)
    if not prompts:
        raise TracemarkError("no prompts given")
    if n <= 0:
        raise TracemarkError(f"n must be positive, got {n}", params=("n",))
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TracemarkError(f"{out}: already exists and is not an empty folder")
    torch.set_flush_denormal(True)
    if pipe is None:
        pipe = load_pipeline(model_dir, lora=lora, device=device or "auto", dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    check_steps(pipe, steps)
    dev = pipe._execution_device

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    width = max(5, len(str(n - 1)))
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("generating", total=n)
    try:
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for start in range(0, n, batch_size):
                idx = list(range(start, min(n, start + batch_size)))
                batch_prompts = [prompts[i % len(prompts)] for i in idx]
                images = _generate_batch(pipe, batch_prompts, [seed + i for i in idx], steps, guidance, dev)
                for i, prompt, img in zip(idx, batch_prompts, images):
                    name = f"{i:0{width}d}.png"
                    Image.fromarray(img, "RGB").save(tmp / name)
                    row = {"file_name": name, "text": prompt, "seed": seed + i, "prompt_index": i % len(prompts)}
                    meta.write(json.dumps(row) + "\n")
                if bar is not None:
                    bar.update(task, advance=len(idx))
        info = {"model": str(model_dir), "lora": str(lora) if lora else None, "n": n, "seed": seed,
                "steps": steps, "guidance": guidance, "prompts": len(prompts)}  # fmt: skip
        (tmp / "generation.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.stop()
    return out


def check_steps(pipe, steps: int) -> None:
    """More sampling steps than the scheduler has training timesteps fail inside diffusers; say so
    in one line (the limit is the model's: 1000 for SD)."""
    from tracemark.errors import TracemarkError

    limit = getattr(getattr(pipe, "scheduler", None), "config", {}).get("num_train_timesteps")
    if isinstance(limit, int) and steps > limit:
        raise TracemarkError(f"steps {steps} exceeds the {limit} timesteps this model's scheduler was trained with",
                             params=("steps",))


def _generate_batch(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, device) -> np.ndarray:
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    latents = _initial_latents(pipe, gens, device)
    with torch.no_grad():
        # the per-image generators also drive ancestral samplers' fresh noise: reproducible whatever the batch
        result = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, latents=latents, generator=gens,
                      output_type="np")
    return np.clip(np.round(result.images * 255.0), 0, 255).astype(np.uint8)


def generate_images(pipe, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 6.0,
                    batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """One image per prompt (image ``i`` from seed ``seed + i``), as an N x H x W x 3 uint8 array."""
    pipe.set_progress_bar_config(disable=True)
    dev = pipe._execution_device
    out = [_generate_batch(pipe, prompts[i : i + batch_size], list(range(seed + i, seed + i + len(prompts[i : i + batch_size]))),
                           steps, guidance, dev) for i in range(0, len(prompts), batch_size)]  # fmt: skip
    return np.concatenate(out)


def _initial_latents(pipe, gens, device) -> torch.Tensor:
    """Per-image initial noise from each image's own CPU generator (batch-size independent)."""
    c = pipe.unet.config.in_channels
    s = pipe.unet.config.sample_size
    if isinstance(s, (tuple, list)):
        h, w = s
    else:
        h = w = s
    dtype = pipe.unet.dtype
    noise = [torch.randn((1, c, h, w), generator=g, dtype=torch.float32) for g in gens]
    return torch.cat(noise).to(device=device, dtype=dtype)


def regenerate(images, prompts: list[str], pipe, strength: float = 0.3, seed: int = 0, steps: int = 25,
               guidance: float = 6.0, batch_size: int = 32) -> list[np.ndarray]:
    """The regeneration attack: launder images through a diffusion model (noise them to
    ``strength`` of the schedule, denoise with their captions; diffusers' img2img pipeline built
    from ``pipe``'s components). An abuser does this to a dataset before fine-tuning to wash out
    pixel-level marks; it is the dataset-level counterpart of the attacks in tracemark.evaluation.attacks."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    comps = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    i2i = StableDiffusionImg2ImgPipeline(**comps, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        x = torch.stack([torch.as_tensor(np.asarray(im, np.float32)).permute(2, 0, 1) / 255.0 for im in batch])
        gens = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(batch))]
        with torch.no_grad():
            r = i2i(list(prompts[start:start + len(batch)]), image=x, strength=strength, num_inference_steps=steps,
                    guidance_scale=guidance, generator=gens, output_type="np")
        out += list(np.clip(np.round(r.images * 255.0), 0, 255).astype(np.uint8))
    return out


def vae_roundtrip(images, pipe, batch_size: int = 16) -> list[np.ndarray]:
    """Regeneration through the public VAE: encode each image with ``pipe``'s autoencoder and decode
    the latent mean back to pixels (no noise, no denoiser, no caption). Marks that live in detail the
    latent cannot represent are washed out; the content survives. Images are batched by size, padded
    (mirrored) to a multiple of the VAE's downsampling factor and cropped back, so each output has its
    input's height and width (uint8, H x W x 3)."""
    arrs = [np.asarray(im, np.float32) for im in images]
    vae = pipe.vae
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    dev = getattr(pipe, "_execution_device", None) or vae.device
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:  # SD's VAE overflows in fp16: run it in fp32 as diffusers does, and put it back
        vae.to(torch.float32)
    out: list[np.ndarray | None] = [None] * len(arrs)
    by_shape: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrs):
        by_shape.setdefault(a.shape, []).append(i)
    try:
        for shape, idx in by_shape.items():
            h, w = shape[:2]
            ph, pw = -h % factor, -w % factor
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                x = np.stack([np.pad(arrs[i], ((0, ph), (0, pw), (0, 0)), mode="symmetric") for i in part])
                t = torch.from_numpy(x).permute(0, 3, 1, 2).to(dev, vae.dtype) / 127.5 - 1.0
                with torch.no_grad():
                    y = vae.decode(vae.encode(t).latent_dist.mode()).sample
                y = ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy()
                for i, im in zip(part, y):
                    out[i] = im[:h, :w].astype(np.uint8)
    finally:
        if upcast:
            vae.to(dtype)
    return out  # type: ignore[return-value]
