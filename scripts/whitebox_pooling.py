"""Experiment: read the white box over *every* probe instead of the copy's own marked samples (issue #12).

Sessions 7-10 found that this world's fine-tunes learn a 38 dB mark as one global average,
``rate x mark``, added at every input whatever the prompt (centred residuals wipe out the 10%
signal). The product's white box reads a copy's key only at that copy's ~20 marked samples. If the
mark is added everywhere, the other copies' probes (about 2000 in a 100-copy group) carry the same
signal, and averaging them lowers the noise that comes from the probes themselves (not the part
that comes from the suspect's own training, which no number of probes removes).

For each model this scores the same shadow-referenced residuals three ways, with the product's
``score_copies`` (same scheme features, content projection, decoys, Holm over the 100 copies):

* ``subset``: each copy read at its own probes (what ``audit --whitebox`` does today);
* ``pooled``: each copy read at all probes of the group (one pooled vector for every key);
* ``others``: each copy read at the probes of the *other* copies only (a diagnostic: a signal here
  is learned regardless of the copy's samples and trigger).

The key never enters the residuals or the pooling, so every statistic keeps the decoy null; the
99 other licensees of each group are its innocent keys (``max_z_innocent``, ``named``).

    python scripts/whitebox_pooling.py --rates 0.01 0.02 0.05 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--rates", nargs="+", type=float, default=[0.02])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--spec", default='{"scheme":"spread","strength":3.2,"selection":"visual"}')
    ap.add_argument("--out", type=Path, default=Path("results/whitebox_pooling.jsonl"))
    args = ap.parse_args()

    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell
    from tracemark.eval.whitebox import cell_residuals, shadow_model, truth_summary
    from tracemark.sim import default_base_path
    from tracemark.trace import content_for, score_copies

    ref, ref_lora = shadow_model(args.work, default_base_path())
    ref_pipe = load_pipeline(ref, lora=ref_lora, device="cpu", dtype="fp32")
    for rate in args.rates:
        for seed in args.seeds:
            spec = {**json.loads(args.spec), "rate": rate, "seed": seed}
            cell = Cell(**spec)
            if not (args.work / "cells" / cell.name / "model").exists():
                print(f"skip {cell.name}: no model", flush=True)
                continue
            cell, reg, data, copies, subsets, res = cell_residuals(args.work, spec, "residuals_shadow.npy",
                                                                   ref_pipe=ref_pipe)
            content = content_for(reg, copies, data)[0]
            every = np.arange(len(res))
            ways = {"subset": subsets, "pooled": {c.id: every for c in copies},
                    "others": {c.id: np.setdiff1d(every, subsets[c.id]) for c in copies}}
            row = {"cell": cell.name, "rate": rate, "seed": seed, "n_probes": len(res)}
            for way, subs in ways.items():
                v = score_copies(list(res), copies, reg, match_files=False, subsets=subs, content=content)
                row[way] = truth_summary(v, cell.licensees)
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
