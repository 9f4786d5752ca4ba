"""Did a grid model learn each colluder's mark? (diagnosis for the collusion cells of the grid)

The two-stage audit among 100 licensee-scoped triggers gives each copy only ~3 stage-1 images,
so a colluder missing from the verdict is either a mark the model did not learn or a screening
miss. This script separates the two: it prompts the model with each colluder's own trigger (the
owner knows who the colluders are here; a real audit does not) and scores 32 images per colluder.

    .venv/bin/python scripts/colluder_oracle.py CELL_NAME [--work results/tmp/grid] [--n 32]

CELL_NAME is a folder under WORK/cells (e.g. visible-trigger-lora-r0.4-seed0-steps3000-mix3-
n256-optscells16-scopelicensee); the colluders and the group are read from the grid's Cell.
Prints one z per colluder and writes WORK/cells/CELL_NAME/colluders_oracle.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--n", type=int, default=32, help="images per colluder")
    args = ap.parse_args()

    from tracemark.audit import _generate, build_plan
    from tracemark.dataset import read_image_rgb
    from tracemark.eval.grid import cell_model, ensure_group, find_cell
    from tracemark.sim.pipeline import load_pipeline
    from tracemark.trace import score_copies

    from tracemark.errors import TracemarkError

    try:
        cell = find_cell(args.cell)
    except TracemarkError as e:
        raise SystemExit(str(e)) from None
    cdir = args.work / "cells" / cell.name
    if not (cdir / "model").is_dir():
        raise SystemExit(f"{cdir / 'model'}: no fine-tuned model (run the cell first)")
    reg, _, _ = ensure_group(args.work, cell, print)
    copies = reg.copies()
    guilty = [c for c in copies if c.licensee in cell.licensees]
    pipe = load_pipeline(*cell_model(args.work, cell))
    qp = build_plan(copies, reg, args.n * len(guilty), seed=11, only=[c.id for c in guilty], stage=2)
    shutil.rmtree(cdir / "oracle", ignore_errors=True)  # a rerun regenerates the same images (fixed seeds)
    paths = _generate({"steps": 25, "guidance": 6.0}, qp, cdir / "oracle", pipe)
    v = score_copies([read_image_rgb(p) for p in paths], guilty, reg, match_files=False, subsets=qp.subsets(guilty))
    out = {"cell": asdict(cell), "n_per_colluder": args.n,
           "z": {s.licensee: round(s.z, 2) for s in v.scores}}
    (cdir / "colluders_oracle.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out["z"]))


if __name__ == "__main__":
    main()
