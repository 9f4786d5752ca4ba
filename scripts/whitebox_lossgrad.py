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
public VAE encoder, so ``-g`` (``tracemark.whitebox.loss_gradients``, since session 11 the
audit's default white-box statistic) is a "residual image" that the product scores like the
denoiser residuals: spread features, content projection, decoy keys, Holm over 100 copies. Unlike the
x0-residual it includes the change of the denoiser's *Jacobian* (a model that fitted ``x + delta``
responds to ``delta`` differently), which is the part the algebra said might add something.
The key enters only the scoring, so the null is the decoys'.

    python scripts/whitebox_lossgrad.py --rates 0.02 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    import time

    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import cell_model, train_cell
    from tracemark.eval.whitebox import script_args, shadow_pipe, trained_cells, truth_summary
    from tracemark.trace import content_for, score_copies
    from tracemark.whitebox import loss_gradients

    args = script_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                       "results/whitebox_lossgrad.jsonl").parse_args()
    ref_pipe = shadow_pipe(args.work)
    for cell in trained_cells(args):
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
                                          probes, ref_pipe=ref_pipe, reference="base"))
            np.save(cache, res)
        secs = time.perf_counter() - t0
        v = score_copies(list(res), copies, reg, match_files=False, subsets=subsets,
                         content=content_for(reg, copies, data)[0])
        row = {"cell": cell.name, "rate": cell.rate, "seed": cell.seed, "n_probes": len(res), "seconds": round(secs, 1),
               **truth_summary(v, cell.licensees)}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
