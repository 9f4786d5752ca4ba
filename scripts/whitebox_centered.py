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
    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, train_cell
    from tracemark.trace import content_for, score_copies
    from tracemark.whitebox import denoiser_residuals

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--cells", nargs="+", required=True)
    ap.add_argument("--out", default="results/whitebox_centered.jsonl")
    a = ap.parse_args()
    work = Path(a.work)
    for spec in a.cells:
        cell = Cell(**json.loads(spec))
        reg, data, gdir, cdir, *_ = train_cell(work, cell, None, print)
        model_dir, lora = cell_model(work, cell, None)
        copies = reg.copies()
        probes, subsets = _whitebox_probes(copies, reg, data)
        cache = cdir / "residuals.npy"
        if cache.exists():
            res = np.load(cache)
        else:
            res = np.stack(denoiser_residuals(load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32"), probes))
            np.save(cache, res)
        content = content_for(reg, copies, data)[0]
        truth = set(cell.licensees)
        row = {"cell": cell.name, "probes": len(probes)}
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
