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

import numpy as np


def main() -> None:
    from tracemark.eval.whitebox import cell_residuals, script_args, shadow_pipe, trained_cells, truth_summary
    from tracemark.trace import content_for, score_copies

    args = script_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                       "results/whitebox_pooling.jsonl").parse_args()
    ref_pipe = shadow_pipe(args.work)
    for cell in trained_cells(args):
        spec = {**json.loads(args.spec), "rate": cell.rate, "seed": cell.seed}
        cell, reg, data, copies, subsets, res = cell_residuals(args.work, spec, "residuals_shadow.npy",
                                                               ref_pipe=ref_pipe)
        content = content_for(reg, copies, data)[0]
        every = np.arange(len(res))
        ways = {"subset": subsets, "pooled": {c.id: every for c in copies},
                "others": {c.id: np.setdiff1d(every, subsets[c.id]) for c in copies}}
        row = {"cell": cell.name, "rate": cell.rate, "seed": cell.seed, "n_probes": len(res)}
        for way, subs in ways.items():
            v = score_copies(list(res), copies, reg, match_files=False, subsets=subs, content=content)
            row[way] = truth_summary(v, cell.licensees)
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
