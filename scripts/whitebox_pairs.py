"""White box for a non-linear scheme: score features(suspect) - features(reference) at the copy's samples.

The product's white box scores the *difference image* (suspect's clean-image prediction minus
the reference's) with the scheme's features, right for schemes whose features are linear in the
image (spread, tile). A second-order mark (``spectral``) changes the *power spectrum* of what the
model predicts; its evidence is the feature difference (log-power ratio), not the features of a
difference image. This script computes both predictions at the same noisy inputs (same seeds) and
tests the true key against decoys, for one grid cell.

    .venv/bin/python scripts/whitebox_pairs.py --cell '{"scheme":"spectral","rate":0.1,"strength":3.2,"opts":"grid=32;band=[0.3,0.6]"}'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from tracemark import stats
    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, train_cell
    from tracemark.trace import scheme_params
    from tracemark.schemes import get_scheme
    from tracemark.whitebox import denoiser_residuals

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--cell", required=True)
    ap.add_argument("--all-copies", action="store_true", help="also score every other copy (innocent keys)")
    a = ap.parse_args()
    work = Path(a.work)
    cell = Cell(**json.loads(a.cell))
    reg, data, *_ = train_cell(work, cell, None, print)
    model_dir, lora = cell_model(work, cell, None)
    copies = reg.copies()
    probes, subsets = _whitebox_probes(copies, reg, data)
    truth = next(c for c in copies if c.licensee in set(cell.licensees))
    idx = np.asarray(subsets[truth.id])
    sel = [probes[i] for i in idx]
    x = [p.image.astype(np.float32) for p in sel]
    pipe = load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32")
    s = [r + xi for r, xi in zip(denoiser_residuals(pipe, sel, reference="data"), x)]
    pipe.disable_lora()
    r = [q + xi for q, xi in zip(denoiser_residuals(pipe, sel, reference="data"), x)]
    sch = get_scheme(truth.scheme, **scheme_params(truth))
    key = reg.key_for_copy(truth)
    decoys = sch.random_vectors(1000, np.random.default_rng(0))
    for name, F in (("pair", sch.features(s) - sch.features(r)),
                    ("difference image", sch.features([a_ - b_ for a_, b_ in zip(s, r)]))):
        res = stats.test_keys(F, sch.key_vectors([key]), decoys, sch.kind)
        others = []
        if a.all_copies:
            keys = [reg.key_for_copy(c) for c in copies if c.id != truth.id]
            others = stats.test_keys(F, sch.key_vectors(keys), decoys, sch.kind).stat
        print(json.dumps({"cell": cell.name, "statistic": name, "probes": len(sel), "z": round(float(res.stat[0]), 3),
                          "p": float(res.p_value[0]),
                          "max_z_other_keys": round(float(np.max(others)), 3) if len(others) else None}))


if __name__ == "__main__":
    main()
