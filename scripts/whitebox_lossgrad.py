"""Experiment: lever 5 measured, the paired denoising-loss test (issue #12).

Session 10 argued, by algebra only, that the paired-loss test ("does the suspect fit licensee A's
marked version of a sample better than the original, relative to the reference, at the same noise
and timestep?") reduces to the white box's residual correlation. This measures it.

For a copy with key ``k`` and pattern ``delta_k``, the test statistic is, over the copy's marked
samples ``x`` with their trigger captions, noise draws and timesteps,

    D_k = sum [L_S(x + delta_k) - L_S(x)] - [L_R(x + delta_k) - L_R(x)]

(``L_S``, ``L_R``: the suspect's and the reference's training loss at the same noisy input; a model
trained on ``x + delta_k`` has a lower loss there, so ``-D_k`` is large for the guilty key). To
first order ``D_k = <g(x), delta_k>`` with ``g = grad_x [L_S - L_R]`` taken in pixels through the
public VAE encoder, so ``-g`` is a "residual image" that the product scores like the denoiser
residuals: spread features, content projection, decoy keys, Holm over 100 copies. Unlike the
x0-residual it includes the change of the denoiser's *Jacobian* (a model that fitted ``x + delta``
responds to ``delta`` differently), which is the part the algebra said might add something.
The key enters only the scoring, so the null is the decoys'.

    python scripts/whitebox_lossgrad.py --rates 0.02 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def loss_gradients(pipe, ref_pipe, probes, *, t_fracs=(0.3, 0.5, 0.7), draws: int = 2, seed: int = 0,
                   batch_size: int = 16) -> list[np.ndarray]:
    """``-grad_x [L_S - L_R]`` per probe (H x W x 3, arbitrary units), the noise drawn as the audit's."""
    import torch

    from tracemark.whitebox import _model_resolution, _to_tensor

    dev = pipe._execution_device
    size = _model_resolution(pipe)
    sched = pipe.scheduler
    n_t = sched.config.num_train_timesteps
    ptype = sched.config.prediction_type
    sf = pipe.vae.config.scaling_factor
    levels = [(int(round(f * (n_t - 1))), d) for f in t_fracs for d in range(draws)]
    out: list[np.ndarray] = []
    for start in range(0, len(probes), batch_size):
        chunk = probes[start:start + batch_size]
        x = _to_tensor([p.image for p in chunk], size).to(dev).requires_grad_(True)
        z0 = pipe.vae.encode(x).latent_dist.mean * sf
        texts = [p.prompt for p in chunk]
        with torch.no_grad():
            emb_s = pipe.encode_prompt(texts, dev, 1, False)[0]
            emb_r = ref_pipe.encode_prompt(texts, dev, 1, False)[0]
        total = 0.0
        for t_val, d in levels:
            g = [torch.Generator().manual_seed(int(seed * 1_000_003 + (start + i) * 7919 + t_val * 31 + d))
                 for i in range(len(chunk))]
            eps = torch.stack([torch.randn(z0.shape[1:], generator=gi) for gi in g]).to(dev)
            t = torch.full((len(chunk),), t_val, device=dev, dtype=torch.long)
            noisy = sched.add_noise(z0, eps, t)
            target = sched.get_velocity(z0, eps, t) if ptype == "v_prediction" else eps
            ls = ((pipe.unet(noisy, t, encoder_hidden_states=emb_s).sample - target) ** 2).sum()
            lr = ((ref_pipe.unet(noisy, t, encoder_hidden_states=emb_r).sample - target) ** 2).sum()
            total = total + ls - lr
        (grad,) = torch.autograd.grad(total, x)
        out += [a.astype(np.float32) for a in (-grad).permute(0, 2, 3, 1).detach().cpu().numpy()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--rates", nargs="+", type=float, default=[0.02])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--spec", default='{"scheme":"spread","strength":3.2,"selection":"visual"}')
    ap.add_argument("--out", type=Path, default=Path("results/whitebox_lossgrad.jsonl"))
    args = ap.parse_args()

    import time

    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, train_cell
    from tracemark.eval.whitebox import shadow_model
    from tracemark.sim import default_base_path
    from tracemark.trace import content_for, score_copies

    ref, ref_lora = shadow_model(args.work, default_base_path())
    ref_pipe = load_pipeline(ref, lora=ref_lora, device="cpu", dtype="fp32")
    for rate in args.rates:
        for seed in args.seeds:
            cell = Cell(**{**json.loads(args.spec), "rate": rate, "seed": seed})
            if not (args.work / "cells" / cell.name / "model").exists():
                print(f"skip {cell.name}: no model", flush=True)
                continue
            reg, data, gdir, cdir, *_ = train_cell(args.work, cell, None, print)
            copies = reg.copies()
            probes, subsets = _whitebox_probes(copies, reg, data)
            cache = cdir / "lossgrad_shadow.npy"
            t0 = time.perf_counter()
            if cache.exists():
                res = np.load(cache)
            else:
                model_dir, lora = cell_model(args.work, cell, None)
                res = np.stack(loss_gradients(load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32"),
                                              ref_pipe, probes))
                np.save(cache, res)
            secs = time.perf_counter() - t0
            v = score_copies(list(res), copies, reg, match_files=False, subsets=subsets,
                             content=content_for(reg, copies, data)[0])
            truth = [s for s in v.scores if s.licensee in cell.licensees][0]
            innocent = [s.z for s in v.scores if s.licensee not in cell.licensees]
            row = {"cell": cell.name, "rate": rate, "seed": seed, "n_probes": len(res), "seconds": round(secs, 1),
                   "z": round(truth.z, 2), "p": float(f"{truth.p_value:.3g}"), "named": truth.named,
                   "false_named": [n for n in v.named if n not in cell.licensees],
                   "max_z_innocent": round(max(innocent), 2), "innocent_sd": round(float(np.std(innocent)), 2),
                   "rank": 1 + sum(z > truth.z for z in innocent)}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
