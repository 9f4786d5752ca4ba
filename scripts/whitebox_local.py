"""Experiment: remove the model-level offset from the white box, keep the local signal (issue #12).

``scripts/whitebox_pooling.py`` (session 11) found that with the visual selection the mark is read
more strongly at the copy's *own* marked samples than at the other copies' probes (2%: mean z 1.06
at its own samples against 0.43 pooled over all), i.e. part of what the fine-tune keeps is local
to the samples it saw marked, while the noise (the suspect's own training, projected on the key)
is shared by every probe. This rescoring of the cached shadow residuals removes what the other
probes share before testing a copy's key:

* ``subset``: the product's statistic (the copy's probes; content projection);
* ``centred``: the copy's pooled vector minus the mean of the *other* probes' (unit) features;
* ``pcK``: the copy's pooled vector with the top ``K`` principal directions of the other probes'
  unit features projected out (plus the content projection).

Everything removed is computed without the copy's own probes and without any key, so each
statistic keeps the decoy null; the group's 99 other licensees are its innocent keys.

    python scripts/whitebox_local.py --rates 0.01 0.02 0.05
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    from tracemark import stats
    from tracemark.audit import _whitebox_probes
    from tracemark.eval.grid import train_cell
    from tracemark.eval.whitebox import script_args, trained_cells
    from tracemark.schemes import get_scheme
    from tracemark.trace import content_for, scheme_params

    ap = script_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), "results/whitebox_local.jsonl")
    ap.add_argument("--pcs", nargs="+", type=int, default=[1, 5, 20, 50])
    ap.add_argument("--cache", default="residuals_shadow.npy", help="residual file in each cell folder")
    args = ap.parse_args()

    for cell in trained_cells(args):
        cdir = args.work / "cells" / cell.name
        if not (cdir / args.cache).exists():
            continue
        reg, data, *_ = train_cell(args.work, cell, None, print)
        copies = reg.copies()
        _, subsets = _whitebox_probes(copies, reg, data)
        res = np.load(cdir / args.cache)
        sch = get_scheme(copies[0].scheme, **scheme_params(copies[0]))
        U = stats._unit_rows(sch.features(list(res)))
        basis = stats.content_basis(sch.features(content_for(reg, copies, data)[0]))
        decoys = sch.random_vectors(1000, np.random.default_rng(0))
        ways = ["subset", "centred"] + [f"pc{k}" for k in args.pcs]
        z = {w: {} for w in ways}
        for c in copies:
            sub = subsets[c.id]
            others = np.setdiff1d(np.arange(len(U)), sub)
            mc = U[sub].mean(axis=0)
            mo = U[others].mean(axis=0)
            _, _, vt = np.linalg.svd(U[others] - mo, full_matrices=False)
            vecs = {"subset": mc, "centred": mc - mo}
            for k in args.pcs:
                vecs[f"pc{k}"] = mc - vt[:k].T @ (vt[:k] @ mc)
            P = sch.key_vectors([reg.key_for_copy(c)])
            for w, m in vecs.items():
                m = stats.project_out(m, basis)
                null = stats.fit_null(stats.key_statistic(m, decoys, sch.kind), sch.kind)
                z[w][c.licensee] = float((stats.key_statistic(m, P, sch.kind)[0] - null.mean) / null.std)
        row = {"cell": cell.name, "rate": cell.rate, "seed": cell.seed, "cache": args.cache}
        for w in ways:
            truth = z[w][cell.licensees[0]]
            inn = [v for k, v in z[w].items() if k not in cell.licensees]
            row[w] = {"z": round(truth, 2), "max_z_innocent": round(max(inn), 2),
                      "innocent_sd": round(float(np.std(inn)), 2), "rank": 1 + sum(v > truth for v in inn)}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
