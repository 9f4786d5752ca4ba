"""Experiment: issue #12 lever 1, a learnability-optimised keyed pattern (FT-Shield's min-min).

FT-Shield (Cui et al., 2023) makes a watermark "learned early" by choosing it, jointly with a
surrogate fine-tune, to *minimise* the diffusion loss of the marked images:
``min_theta min_delta sum_i L_LDM(theta; x_i + delta, c_i)``. Here the same objective is run per
issued copy, on the public base (the owner has it), over the copy's marked samples with their
trigger captions, plus as many clean samples of the copy as fill a batch of 32 (what the
abuser's fine-tune also sees). Both minimisations share one backward pass per step.

The key must still identify the pattern and decoy keys must still give the null, so the pattern
keeps the ``spread`` scheme's structure: its band DCT coefficients are ``s_j * a_j`` with the
key's signs ``s_j`` and learned magnitudes ``a_j >= 0`` (softplus), rescaled to the scheme's RMS
after every step. The detector is unchanged (the unweighted sign correlation, standard normal for
any key the model never saw), so the calibration measured for ``spread`` holds as it is; only
*where* the energy goes is optimised.

For each cell: fit the pattern of the cell's licensee, write a fitted copy (the group's copy
with its marked files re-marked by the fitted pattern; everything else identical), fine-tune it
with the cell's seed, and run the product's white-box audit (shadow reference) against the
group's 100 copies, plus the grid's 64-image black-box audit. Rows go to ``--csv`` and ``--out``.

    python scripts/fitted_pattern.py --cells '{"scheme":"spread","rate":0.02,"strength":3.2,"selection":"visual","seed":0}'
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def dct_matrix(n: int):
    """Orthonormal DCT-II matrix D (n x n): ``dctn(x, norm='ortho') = D @ x @ D.T``."""
    import torch
    from scipy.fft import dct

    return torch.tensor(dct(np.eye(n), norm="ortho", axis=0), dtype=torch.float32)


def fit_pattern(pipe, scheme, key, marked: list[np.ndarray], prompts: list[str], clean: list[np.ndarray],
                clean_prompts: list[str], *, iters: int, seed: int, lr_pattern: float = 0.05,
                lr_lora: float = 2e-3, rank: int = 16, objective: str = "min", log=print):
    """The fitted pattern: (pattern H x W x 3 in 0..255 units at the scheme's RMS, stats dict).

    ``objective="min"``: FT-Shield's min-min (pattern and surrogate LoRA both minimise the loss);
    ``"max"``: the pattern *maximises* the frozen base's loss on the marked samples (no surrogate):
    the energy the base cannot explain, which is what a fine-tune has to learn to fit them."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from tracemark.diffusion.training import LORA_TARGETS, CaptionEncoder

    torch.manual_seed(seed)
    g = scheme.grid
    h, w = marked[0].shape[:2]
    assert (h, w) == (g, g), "this experiment marks images at the scheme's grid size"
    mask = torch.tensor(scheme._mask)
    signs = torch.tensor(scheme.key_vectors([key])[0].reshape(3, -1), dtype=torch.float32)
    D = dct_matrix(g)
    u = torch.full_like(signs, float(np.log(np.e - 1.0)), requires_grad=True)  # softplus(u) = 1: spread

    def pattern():
        coeffs = torch.zeros(3, g, g)
        coeffs[:, mask] = signs * F.softplus(u)
        pat = torch.einsum("ij,cjk,kl->cil", D.T, coeffs, D)  # inverse ortho DCT per channel
        return pat / pat.pow(2).mean().sqrt() * scheme.strength  # 0..255 units, RMS = strength

    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for m in (unet, vae, te):
        m.requires_grad_(False)
    if objective == "min":
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS["broad"])))
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    emb = CaptionEncoder(tok, te, "cpu", torch.float32, trainable=False)
    e_marked, e_clean = emb(prompts), emb(clean_prompts)
    x_m = torch.tensor(np.stack(marked), dtype=torch.float32).permute(0, 3, 1, 2)  # N x 3 x H x W, 0..255
    x_c = torch.tensor(np.stack(clean), dtype=torch.float32).permute(0, 3, 1, 2)
    scaling = float(vae.config.scaling_factor)
    with torch.no_grad():
        post_c = vae.encode(x_c / 127.5 - 1).latent_dist
    opt_u = torch.optim.Adam([u], lr=lr_pattern)
    opt_t = torch.optim.AdamW(lora_params, lr=lr_lora) if lora_params else None
    gen = torch.Generator().manual_seed(seed)
    losses = []

    def loss_of(pat, train_lora: bool):
        xm = ((x_m + pat.unsqueeze(0)).clamp(0, 255)) / 127.5 - 1
        lat_m = vae.encode(xm).latent_dist.sample(gen) * scaling
        lat = torch.cat([lat_m, post_c.sample(gen) * scaling]) if train_lora else lat_m
        e = torch.cat([e_marked, e_clean]) if train_lora else e_marked
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=gen)
        noisy = sched.add_noise(lat, noise, t)
        target = sched.get_velocity(lat, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        pred = unet(noisy, t, encoder_hidden_states=e).sample
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return per[: len(x_m)].mean(), per.mean()

    t0 = time.time()
    for it in range(iters):
        pat = pattern()
        opt_u.zero_grad()
        if opt_t is not None:
            marked_loss, all_loss = loss_of(pat, True)
            opt_t.zero_grad()
            all_loss.backward()  # both minimise the same loss (the clean half only moves the LoRA)
            opt_t.step()
        else:
            marked_loss, _ = loss_of(pat, False)
            (-marked_loss).backward()
        opt_u.step()
        losses.append(marked_loss.item())
        if (it + 1) % 50 == 0:
            log(f"    iter {it + 1}/{iters}: marked loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
    with torch.no_grad():
        a = F.softplus(u).numpy().ravel()
        pat = pattern().permute(1, 2, 0).numpy()
    pr = float(a.sum() ** 2 / (len(a) * (a**2).sum()))  # participation ratio: 1 = uniform (spread)
    stats = {"fit_s": round(time.time() - t0, 1), "loss_first50": round(float(np.mean(losses[:50])), 5),
             "loss_last50": round(float(np.mean(losses[-50:])), 5), "participation": round(pr, 3),
             "a_max_over_mean": round(float(a.max() / a.mean()), 2)}
    return pat, stats


def base_loss(pipe, images: list[np.ndarray], prompts: list[str], pat: np.ndarray, draws: int = 8, seed: int = 0):
    """The public base's mean denoising loss on ``images + pat`` (seeded noise, paired across patterns)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from tracemark.diffusion.training import CaptionEncoder

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    e = CaptionEncoder(pipe.tokenizer, pipe.text_encoder, "cpu", torch.float32, trainable=False)(prompts)
    with torch.no_grad():
        x = torch.tensor(np.clip(np.rint(np.stack(images) + pat[None]), 0, 255), dtype=torch.float32)
        lat = pipe.vae.encode(x.permute(0, 3, 1, 2) / 127.5 - 1).latent_dist.mean * float(pipe.vae.config.scaling_factor)
        gen = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(draws):
            noise = torch.randn(lat.shape, generator=gen)
            t = torch.randint(0, 1000, (lat.shape[0],), generator=gen)
            target = sched.get_velocity(lat, noise, t)
            pred = pipe.unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=e).sample
            out.append(float(F.mse_loss(pred, target)))
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--cells", nargs="+", required=True, help="grid Cell fields as JSON, one per model")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--objective", choices=["min", "max"], default="min",
                    help="min: FT-Shield's min-min; max: maximise the frozen base's loss")
    ap.add_argument("--out", type=Path, default=Path("results/fitted_pattern.jsonl"))
    ap.add_argument("--csv", type=Path, default=Path("results/whitebox_s10.csv"),
                    help="white-box rows (a file of its own: the session-9 rows of results/whitebox.csv share cell names)")
    ap.add_argument("--no-blackbox", action="store_true")
    args = ap.parse_args()

    from PIL import Image

    from tracemark.audit import _whitebox_probes, audit_whitebox
    from tracemark.dataset import load_dataset, read_image_rgb
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.common import append_row
    from tracemark.eval.grid import Cell, ensure_group
    from tracemark.eval.whitebox import _audit_row, shadow_model
    from tracemark.metrics import psnr, ssim
    from tracemark.schemes import get_scheme
    from tracemark.sim import default_base_path, finetune
    from tracemark.trace import scheme_params

    base = default_base_path()
    ref, ref_lora = shadow_model(args.work, base)
    for spec in args.cells:
        cell = Cell(**json.loads(spec))
        reg, data, gdir = ensure_group(args.work, cell)
        lic = cell.licensees[0]
        copy = next(c for c in reg.copies() if c.licensee == lic)
        scheme = get_scheme(copy.scheme, **scheme_params(copy))
        key = reg.key_for_copy(copy)
        name = cell.name + ("-fitted" if args.objective == "min" else "-fittedmax")
        cdir = args.work / "cells" / name
        fitted = cdir / "copy"
        info_path = cdir / "fit.json"
        marked_names = [m["file_name"] for m in copy.marked]
        if not info_path.exists():
            print(f"{name}: fitting the pattern of {lic} ({len(marked_names)} marked samples)", flush=True)
            src = gdir / "copies" / lic
            probes = _whitebox_probes([copy], reg, data)[0]  # the originals with the copy's trigger captions
            marked, prompts = [p.image for p in probes], [p.prompt for p in probes]
            rng = np.random.default_rng(cell.seed)
            samples = [s for s in load_dataset(data).samples if Path(s.path).name not in set(marked_names)]
            pick = rng.choice(len(samples), size=max(0, 32 - len(marked)), replace=False)
            clean = [read_image_rgb(Path(samples[i].path)) for i in pick]
            pipe = load_pipeline(base, device="cpu", dtype="fp32")
            pat, stats = fit_pattern(pipe, scheme, key, marked, prompts, clean, [samples[i].text for i in pick],
                                     iters=args.iters, seed=cell.seed, objective=args.objective)
            pipe = load_pipeline(base, device="cpu", dtype="fp32")  # without the surrogate's adapter
            spread = scheme.strength * scheme.pattern(key, *marked[0].shape[:2])
            stats["base_loss_spread"] = base_loss(pipe, marked, prompts, spread)
            stats["base_loss_fitted"] = base_loss(pipe, marked, prompts, pat)
            stats["base_loss_original"] = base_loss(pipe, marked, prompts, np.zeros_like(pat))
            stats["pattern_corr_with_spread"] = round(float((pat * spread).sum() / np.sqrt((pat**2).sum() * (spread**2).sum())), 3)
            tmp = cdir / "copy.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            ps, ss, zs = [], [], []
            for n, x in zip(marked_names, marked):
                y = np.clip(np.rint(x.astype(np.float32) + pat), 0, 255).astype(np.uint8)
                Image.fromarray(y).save(tmp / n)
                y2 = read_image_rgb(tmp / n)
                ps.append(psnr(x, y2))
                ss.append(ssim(x, y2))
                zs.append(float(scheme.score([y2.astype(np.float32)], [key])[0, 0]))
            stats.update(psnr_files=round(float(np.mean(ps)), 2), ssim_files=round(float(np.mean(ss)), 4),
                         z_per_file=round(float(np.mean(zs)), 2))
            shutil.rmtree(fitted, ignore_errors=True)
            tmp.rename(fitted)
            np.save(cdir / "pattern.npy", pat)
            info_path.write_text(json.dumps(stats))
            print(f"  {stats}", flush=True)
        stats = json.loads(info_path.read_text())
        model = cdir / "model"
        if not (model / "pytorch_lora_weights.safetensors").exists():
            t0 = time.time()
            finetune(fitted, base, model, method="lora", seed=cell.seed,
                     resume=(model / "checkpoints" / "last.pt").exists(), progress=False)
            stats["finetune_s"] = round(time.time() - t0)
        row_wb = {}
        wb_path = cdir / "whitebox_shadow.json"
        if not wb_path.exists():
            res = audit_whitebox(base, reg, data, lora=model, reference=ref, reference_lora=ref_lora)
            wb_path.write_text(json.dumps(res.to_dict(), default=float))
            row_wb = _audit_row(name + "+shadow", gdir.name, res, {lic},
                                {"rate": cell.rate, "method": cell.method, "scope": cell.scope, "finetune_s": ""})
            append_row(args.csv, row_wb)
            print(f"  white box (shadow): z {row_wb['z']} p {row_wb['p']} named [{row_wb['named']}] "
                  f"max innocent {row_wb['max_z_innocent']}", flush=True)
        bb = {}
        if not args.no_blackbox and not (cdir / "blackbox.json").exists():
            from tracemark.audit import audit_model

            res = audit_model(base, reg, lora=model, n=cell.n, seed=cell.seed, work_dir=cdir / "audit")
            v = res.verdict
            true = [s for s in v.scores if s.licensee == lic]
            bb = {"bb_z": round(float(true[0].z), 3) if true else None, "bb_named": ";".join(v.named)}
            (cdir / "blackbox.json").write_text(json.dumps(bb))
            print(f"  black box: {bb}", flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps({"cell": name, **stats, "wb_shadow_z": row_wb.get("z"), "wb_p": row_wb.get("p"),
                                "wb_named": row_wb.get("named"), **bb}) + "\n")


if __name__ == "__main__":
    main()
