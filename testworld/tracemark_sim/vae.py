"""Train the world's ``AutoencoderKL``: the lossy latent codec of the tiny Stable Diffusion.

SD's VAE is a stock diffusers ``AutoencoderKL`` that maps images to latents with 4 channels and
is *lossy*; a watermark reaches SD's UNet only as far as that round trip keeps it. The tiny world
uses the same class (32x32x3 -> 16x16x4 by default), trained here on the pretraining images:
reconstruction MSE plus a small KL term (weight 1e-6, the latent-diffusion recipe without its
perceptual and adversarial losses, which a 2-core budget cannot afford). After training, the
``scaling_factor`` is set to 1 / std of the latents on the training data, as SD's 0.18215 was.

Initialisation: the encoder's log-variance outputs start at -8 (posterior std 0.02) instead of 0.
With a fresh posterior of std 1 the decoder first has to learn to see through unit noise on every
latent, which costs most of a CPU budget (measured: docs/sim.md); the KL weight is too small to
matter either way.

Resumable like the UNet loop: ``<out>/checkpoints/last.pt`` every ``save_every`` steps; the
same (seed, step) draws give the same run, interrupted or not.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tracemark.diffusion.training import (
    Progress,
    _batch_indices,
    _mix,
    atomic_torch_save,
    load_images,
    read_imagefolder,
)


def psnr_ssim(vae, images_u8: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of the VAE round trip (``decode(encode(x).mode())``) on uint8 images."""
    from tracemark.marking.metrics import psnr, ssim

    ps, ss = [], []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = images_u8[i : i + batch].float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            y8 = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            for a, b in zip(images_u8[i : i + batch], y8):
                a_np, b_np = a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy()
                ps.append(psnr(a_np, b_np))
                ss.append(ssim(a_np, b_np))
    return float(sum(ps) / len(ps)), float(sum(ss) / len(ss))


def pretrain_vae(data_dir, out_dir, steps: int = 4000, *, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                 kl_weight: float = 1e-6, save_every: int = 250, resume: bool = False, num_threads: int | None = None,
                 progress: bool = True, config=None, holdout: int = 256, crop: int = 16,
                 init_logvar: float | None = -8.0, init_from=None) -> Path:  # fmt: skip
    """Train a fresh ``AutoencoderKL`` (sizes from ``config``, a :class:`TinyConfig`) on the
    imagefolder ``data_dir`` (random ``crop`` x ``crop`` crops train the convolutions at a quarter
    of the cost, but GroupNorm statistics over a crop are not those over a whole image: a
    crop-trained VAE must be finished on whole images, ``crop=0`` with ``init_from``); writes ``out_dir`` as a diffusers model folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) and ``training.json`` with held-out PSNR/SSIM."""
    from diffusers.optimization import get_scheduler

    from tracemark.errors import TracemarkError
    from tracemark_sim.pipeline import TinyConfig, build_vae

    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    cfg = config or TinyConfig()
    out = Path(out_dir)
    ckpt_path = out / "checkpoints" / "last.pt"
    if not resume and out.exists() and any(out.iterdir()):
        raise TracemarkError(f"{out}: already exists and is not empty (use --resume to continue a run)")
    rows = read_imagefolder(Path(data_dir))
    if len(rows) <= holdout:
        raise TracemarkError(f"{data_dir}: need more than {holdout} images to train and hold out")
    images = load_images([p for p, _ in rows], cfg.resolution)
    train, held = images[holdout:], images[:holdout]
    torch.manual_seed(seed)
    vae = build_vae(cfg)
    if init_from is not None:  # continue from a trained VAE (e.g. full images after crops)
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(init_from, local_files_only=True).state_dict())
    elif init_logvar is not None:  # start with a near-deterministic posterior (see module docstring)
        with torch.no_grad():
            vae.encoder.conv_out.bias[cfg.latent_channels :].fill_(init_logvar)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(200, steps // 10), num_training_steps=steps)
    step, hist = 0, []
    if resume:
        if not ckpt_path.is_file():
            raise TracemarkError(f"{ckpt_path}: no checkpoint to resume from")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        vae.load_state_dict(state["weights"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        step, hist = int(state["step"]), list(state["loss_hist"])
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(steps, step, f"vae {out.name}", enabled=progress)
    t0, running = time.time(), None
    try:
        while step < steps:
            g = torch.Generator().manual_seed(_mix(seed, step, 0xAE))
            x = train[_batch_indices(len(train), batch_size, step, seed)].float() / 127.5 - 1
            if crop and crop < x.shape[-1]:  # the codec is convolutional: crops train it cheaper
                i, j = torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=g).tolist()
                x = x[..., i : i + crop, j : j + crop]
            flip = torch.rand(len(x), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
            rec = vae.decode(z).sample
            loss = F.mse_loss(rec, x) + kl_weight * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise TracemarkError(f"VAE training diverged at step {step}; lower --lr")
            running = lv if running is None else 0.98 * running + 0.02 * lv
            if step % 50 == 0:
                hist.append(round(running, 6))
            bar.update(step, running)
            if save_every and step % save_every == 0:
                atomic_torch_save({"step": step, "weights": vae.state_dict(), "optimizer": opt.state_dict(),
                                    "lr_scheduler": sched.state_dict(), "loss_hist": hist}, ckpt_path)  # fmt: skip
    finally:
        bar.close()
    atomic_torch_save({"step": step, "weights": vae.state_dict(), "optimizer": opt.state_dict(),
                        "lr_scheduler": sched.state_dict(), "loss_hist": hist}, ckpt_path)  # fmt: skip
    vae.eval()
    with torch.no_grad():  # SD's convention: unit-variance latents after scaling
        lat = torch.cat([vae.encode(train[i : i + 256].float() / 127.5 - 1).latent_dist.mode()
                         for i in range(0, min(len(train), 2048), 256)])  # fmt: skip
    vae.register_to_config(scaling_factor=round(1.0 / float(lat.std()), 5))
    p, s = psnr_ssim(vae, held)
    tmp = out / ".model.tmp"
    vae.save_pretrained(tmp, safe_serialization=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    info = {"method": "pretrain_vae", "data_dir": str(data_dir), "steps_done": step, "lr": lr,
            "batch_size": batch_size, "seed": seed, "kl_weight": kl_weight, "crop": crop,
            "init_from": str(init_from) if init_from else None,
            "seconds_this_session": round(time.time() - t0, 1), "final_loss": running,
            "heldout_psnr_db": round(p, 2), "heldout_ssim": round(s, 4), "heldout_images": holdout,
            "scaling_factor": vae.config.scaling_factor, "loss_every_50_steps": hist,
            "torch_threads": torch.get_num_threads()}  # fmt: skip
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv=None) -> None:
    """``python -m tracemark_sim.vae DATA OUT [--steps N] ...``: the VAE stage of pretraining."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tracemark_sim.vae", description=pretrain_vae.__doc__)
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crop", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", help="start from this trained AutoencoderKL folder")
    a = ap.parse_args(argv)
    out = pretrain_vae(a.data, a.out, a.steps, lr=a.lr, batch_size=a.batch_size, crop=a.crop, seed=a.seed,
                       num_threads=a.threads, resume=a.resume, init_from=a.init_from)  # fmt: skip
    print(json.loads((out / "training.json").read_text())["heldout_psnr_db"], "dB held-out PSNR")


if __name__ == "__main__":
    main()
