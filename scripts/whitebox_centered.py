"""White box with the residuals centred: each probe's residual minus the mean residual of all probes.

Why: a fine-tune changes the denoiser for every sample (domain, style, colour drift); projected
onto a key's pattern that common change is a model-level offset that more probes do not average
away, so it sets the white box's noise floor. A mark the model learned *for the copy's samples*
(a concept selection) survives centring, while the common change cancels. Centring is a
key-independent transform of the residual images, so the decoy null is unchanged. The raw
residuals are cached per cell (``residuals.npy``) so the variants cost nothing to rescore.

    .venv/bin/python scripts/whitebox_centered.py --cells '{"scheme":"spread","rate":0.1,"strength":3.2,"opts":"band=[11,14]"}' ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from tracemark.eval.whitebox import cell_residuals
    from tracemark.trace import content_for, score_copies

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--cells", nargs="+", required=True)
    ap.add_argument("--out", default="results/whitebox_centered.jsonl")
    a = ap.parse_args()
    work = Path(a.work)
    for spec in a.cells:
        cell, reg, data, copies, subsets, res = cell_residuals(work, json.loads(spec), "residuals.npy")
        content = content_for(reg, copies, data)[0]
        truth = set(cell.licensees)
        row = {"cell": cell.name, "probes": len(res)}
        for name, R in (("product", res), ("centred", res - res.mean(axis=0, keepdims=True))):
            v = score_copies(list(R), copies, reg, match_files=False, subsets=subsets, n_decoys=1000, alpha=0.01,
                             seed=0, content=content)
            true = [s for s in v.scores if s.licensee in truth]
            others = [s.z for s in v.scores if s.licensee not in truth]
            row[name] = {"z": round(float(np.mean([s.z for s in true])), 3), "p": max(s.p_value for s in true),
                         "named": list(v.named), "max_z_innocent": round(max(others), 3)}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
