"""Experiment: does averaging several shadow references raise the white box's z? (issue #12, session 11)

The loss statistic reads ``-grad_x [L_suspect - L_reference]``. With one shadow (a LoRA the owner
fine-tuned on the clean data, seed 7) the difference carries, besides the mark, the two fine-tunes'
own randomness. If the shadow's share of that noise is large, the mean loss of K shadows (seeds 7,
8, 9, 10: ``grad[L_S - mean_k L_k] = mean_k grad[L_S - L_k]``) removes up to half of it and z
grows by up to sqrt(2); if the noise is the suspect's own (or is the mark's own variability across
keys), z stays. Each shadow's gradient is computed at the audit's levels and draws (the product's
``loss_gradients``, same probes and noise) and cached; K = 1..4 and each shadow alone are scored
with the product's ``score_copies``. The innocent clean LoRA (seed 0) is kept out of the shadows
so that it stays an innocent model for calibration.

    python scripts/whitebox_shadows.py --rates 0.02 --seeds 0 1 2 3 4 --shadows 7 8 9 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import cell_model, train_cell
    from tracemark.eval.whitebox import script_args, shadow_model, trained_cells, truth_summary
    from tracemark.sim import default_base_path
    from tracemark.trace import content_for, score_copies
    from tracemark.whitebox import loss_gradients

    ap = script_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "results/whitebox_shadows.jsonl")
    ap.add_argument("--shadows", nargs="+", type=int, default=[7, 8, 9, 10])
    args = ap.parse_args()

    refs = {s: shadow_model(args.work, default_base_path(), seed=s) for s in args.shadows}
    for cell in trained_cells(args):
        reg, data, gdir, cdir, *_ = train_cell(args.work, cell, None, print)
        copies = reg.copies()
        probes, subsets = _whitebox_probes(copies, reg, data)
        pipe = None
        grads = {}
        for s, (ref, ref_lora) in refs.items():
            # seed 7's cache is scripts/whitebox_lossgrad.py's (the audit's levels, draws and noise)
            cache = cdir / ("lossgrad_shadow.npy" if s == 7 else f"lossgrad_shadow{s}.npy")
            if not cache.exists():
                if pipe is None:
                    model_dir, lora = cell_model(args.work, cell, None)
                    pipe = load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32")
                ref_pipe = load_pipeline(ref, lora=ref_lora, device="cpu", dtype="fp32")
                np.save(cache, np.stack(loss_gradients(pipe, probes, ref_pipe=ref_pipe, reference="base")))
            grads[s] = np.load(cache)
        content = content_for(reg, copies, data)[0]

        def z_of(keys):
            res = sum(grads[k] for k in keys) / len(keys)
            v = score_copies(list(res), copies, reg, match_files=False, subsets=subsets, content=content)
            return truth_summary(v, cell.licensees)

        row = {"cell": cell.name, "rate": cell.rate, "seed": cell.seed}
        for s in args.shadows:
            row[f"shadow{s}"] = z_of([s])
        for k in range(2, len(args.shadows) + 1):
            row[f"mean{k}"] = z_of(args.shadows[:k])
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
