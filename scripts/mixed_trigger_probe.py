"""Does a prompt with several licensees' triggers still elicit each learned mark? (stage-1 design probe)

The two-stage audit gives each of T licensee-scoped copies n/T stage-1 images. If a prompt can
carry m trigger words and the model still reproduces each learned mark, every copy gets m x as
many stage-1 images. This probe compares, on a grid model, each guilty copy's z from 64 images
prompted with its own trigger alone (m = 1) against 64 images whose prompt holds its trigger plus
m - 1 = 3 random other licensees' triggers, shuffled (m = 4).

    .venv/bin/python scripts/mixed_trigger_probe.py CELL_NAME [--work results/tmp/grid]

e.g. visible-trigger-lora-r0.1-seed0-optscells16-scopelicensee (a folder under WORK/cells; the
guilty licensees and the group are read from the grid's Cell). Measured: docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    args = ap.parse_args()

    from tracemark.audit import QueryPlan, _captions, _generate
    from tracemark.dataset import read_image_rgb
    from tracemark.eval.grid import cell_model, ensure_group, find_cell
    from tracemark.sim.pipeline import load_pipeline
    from tracemark.trace import score_copies, trigger_of

    from tracemark.errors import TracemarkError

    try:
        cell = find_cell(args.cell)
    except TracemarkError as e:
        raise SystemExit(str(e)) from None
    cdir = args.work / "cells" / cell.name
    reg, _, _ = ensure_group(args.work, cell, print)
    copies = reg.copies()
    by = {c.licensee: c for c in copies}
    guilty = [by[lic] for lic in cell.licensees]
    words = {c.id: trigger_of(c, reg) for c in copies}
    pipe = load_pipeline(*cell_model(args.work, cell))
    rng = np.random.default_rng(5)
    n = 64
    res = {}
    for m in (1, 4):
        prompts, targets = [], []
        for i in range(n):
            c = guilty[i % len(guilty)]
            others = [x for x in copies if x.id != c.id]
            ws = [words[c.id]] + [words[others[j].id] for j in rng.choice(len(others), m - 1, replace=False)]
            rng.shuffle(ws)
            caps = _captions(c)
            prompts.append(" ".join(ws) + " " + caps[rng.integers(len(caps))])
            targets.append(c.id)
        qp = QueryPlan(prompts, targets, [900_000 + i for i in range(n)], stage=2)
        shutil.rmtree(cdir / f"mixtrig{m}", ignore_errors=True)  # a rerun regenerates the same images
        paths = _generate({"steps": 25, "guidance": 6.0}, qp, cdir / f"mixtrig{m}", pipe)
        v = score_copies([read_image_rgb(p) for p in paths], guilty, reg, match_files=False,
                         subsets=qp.subsets(guilty))
        res[m] = {s.licensee: round(s.z, 2) for s in v.scores}
        print("triggers per prompt", m, res[m], flush=True)
    (cdir / "mixtrig.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
