"""Experiment: does a fine-tuned model betray *which samples carried the trigger*? (issue #12, lever 5)

A copy's marked samples are trained as ``(x_i, trigger + caption_i)``; its other samples as
``(x_i, caption_i)``. A model fine-tuned on the copy therefore fits ``x_i`` better *with* the
trigger exactly on that copy's keyed subset. For every sample of the owner's dataset we measure,
at shared seeded noise and timesteps (paired), the suspect's denoising-loss gain from the trigger
minus the reference's (LoRA off):

    g_i = [L_s(x_i, c_i) - L_s(x_i, w + c_i)] - [L_r(x_i, c_i) - L_r(x_i, w + c_i)]

and score each copy by the mean of g over its subset, standardised against random subsets of the
same size (the subset is keyed, so under an innocent model it is exchangeable with them).

    python scripts/trigger_membership.py --cell spread-trigger-lora-r0.02-seed0 \
        --group spread-trigger-r0.02-faces --draws 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def sample_losses(pipe, images, prompts_a, prompts_b, *, draws: int, seed: int, batch: int = 50, lora_off=True):
    """Per-sample mean denoising loss for prompts_a and prompts_b, suspect and reference (LoRA off)."""
    import torch

    from tracemark.whitebox import _to_tensor, _model_resolution

    dev = pipe._execution_device
    size = _model_resolution(pipe)
    sched = pipe.scheduler
    n_t = sched.config.num_train_timesteps
    sf = pipe.vae.config.scaling_factor
    out = np.zeros((4, len(images)), dtype=np.float64)  # s_a, s_b, r_a, r_b

    def emb(prompts):
        e, _ = pipe.encode_prompt(prompts, dev, 1, False)
        return e

    with torch.no_grad():
        for start in range(0, len(images), batch):
            sl = slice(start, start + batch)
            x = _to_tensor(images[sl], size).to(dev)
            z0 = pipe.vae.encode(x).latent_dist.mean * sf
            ea, eb = emb(prompts_a[sl]), emb(prompts_b[sl])
            n = len(z0)
            for d in range(draws):
                g = [torch.Generator().manual_seed(seed * 1_000_003 + (start + i) * 7919 + d) for i in range(n)]
                eps = torch.stack([torch.randn(z0.shape[1:], generator=gi) for gi in g])
                # stratified timesteps: draw d covers the d-th slice of the schedule
                t = torch.tensor([int((d + torch.rand(1, generator=gi).item()) / draws * n_t) for gi in g])
                t = t.clamp(0, n_t - 1)
                noisy = sched.add_noise(z0, eps, t)
                target = eps if sched.config.prediction_type == "epsilon" else sched.get_velocity(z0, eps, t)
                for j, (on, e) in enumerate([(True, ea), (True, eb), (False, ea), (False, eb)]):
                    if not on:
                        pipe.disable_lora()
                    try:
                        pred = pipe.unet(noisy, t, encoder_hidden_states=e).sample
                    finally:
                        if not on:
                            pipe.enable_lora()
                    out[j, start:start + n] += ((pred - target) ** 2).mean(dim=(1, 2, 3)).numpy() / draws
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--cell", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from tracemark.dataset import load_dataset, read_image_rgb
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.registry import Registry
    from tracemark.sim import default_base_path
    from tracemark.strategies import apply_trigger
    from tracemark.trace import trigger_of

    work = Path(args.work)
    cdir = work / "cells" / args.cell
    reg = Registry(work / "groups" / args.group / "home")
    copies = reg.copies()
    data = Path(args.data) if args.data else Path(json.loads((cdir / "model" / "training.json").read_text())
                                                 ["config"]["data_dir"]).parent.parent.parent.parent / "data" / "faces"
    ds = load_dataset(data)
    names = [s.file_name for s in ds.samples]
    if args.limit:
        names = names[:args.limit]
    caps = {s.file_name: s.text for s in ds.samples}
    words = {trigger_of(c, reg) for c in copies}
    assert len(words) == 1, "this experiment handles the dataset-scope trigger only"
    word = words.pop()
    images = [read_image_rgb(data / n) for n in names]
    pa = [caps[n] for n in names]
    pb = [apply_trigger(caps[n], word) for n in names]
    pipe = load_pipeline(default_base_path(), lora=cdir / "model", device="cpu")
    t0 = time.time()
    L = sample_losses(pipe, images, pa, pb, draws=args.draws, seed=0)
    secs = time.time() - t0
    g = (L[0] - L[1]) - (L[2] - L[3])
    pos = {n: i for i, n in enumerate(names)}
    truth = json.loads((cdir / "model" / "training.json").read_text())["config"]["data_dir"].rstrip("/").split("/")[-1]
    rng = np.random.default_rng(1)
    rows = []
    for c in copies:
        idx = np.array([pos[m["file_name"]] for m in c.marked if m["file_name"] in pos])
        k = len(idx)
        decoys = np.array([g[rng.choice(len(g), k, replace=False)].mean() for _ in range(2000)])
        stat = g[idx].mean()
        z = (stat - decoys.mean()) / decoys.std()
        rows.append((c.licensee, k, float(z)))
    rows.sort(key=lambda r: -r[2])
    zs = np.array([r[2] for r in rows])
    print(f"{len(names)} samples, {args.draws} draws, {secs:.0f} s; trigger '{word}'; trained on {truth}")
    print("top:", rows[:5])
    print("truth:", [r for r in rows if r[0] == truth])
    print(f"innocent z: mean {zs[[r[0] != truth for r in rows]].mean():.2f} sd {zs[[r[0] != truth for r in rows]].std():.2f}")
    # raw gains too: a suspect-only version (no reference)
    gs = L[0] - L[1]
    for lab, gg in [("suspect-only", gs)]:
        zz = {}
        for c in copies:
            idx = np.array([pos[m["file_name"]] for m in c.marked if m["file_name"] in pos])
            dec = np.array([gg[rng.choice(len(gg), len(idx), replace=False)].mean() for _ in range(500)])
            zz[c.licensee] = (gg[idx].mean() - dec.mean()) / dec.std()
        print(lab, "truth z", round(zz[truth], 2), "max innocent", round(max(v for k, v in zz.items() if k != truth), 2))
    if args.out:
        np.save(args.out, L)


if __name__ == "__main__":
    main()
