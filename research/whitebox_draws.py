"""Issue #32 lever 3: more evidence per marked sample. The default white-box audit (the registered
shadows, the loss statistic) read with more noise levels and noise draws per probe than the
default 3 levels x 2 draws, on suspects whose default z sits near the threshold, and on an innocent
LoRA (the null must stay: more draws change the evidence, not the key-independence).

    OMP_NUM_THREADS=2 python -m research.whitebox_draws --home HOME --data DATA \\
        --suspect jpeg50=LORA --suspect innocent=LORA --reads 3x2 3x8 9x4 --out rows.jsonl

READS: LxD, L noise levels spread evenly over (0.1, 0.9) (3: the default 0.3, 0.5, 0.7) and D draws.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tracemark.audit.whitebox import audit_whitebox
from tracemark.registry.database import Registry

BASE = Path("testworld/tracemark_sim/base_model")


def levels(n: int) -> tuple[float, ...]:
    return (0.3, 0.5, 0.7) if n == 3 else tuple(float(x) for x in np.round(np.linspace(0.1, 0.9, n), 3))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--suspect", action="append", required=True, help="NAME=LORA_DIR (repeat)")
    ap.add_argument("--reads", nargs="+", default=["3x2", "3x8"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    reg = Registry(args.home)
    shadows = reg.shadows(reg.copies()[0].dataset)
    done = set()
    if args.out.exists():
        done = {(r["home"], r["suspect"], r["reads"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    for spec in args.suspect:
        name, lora = spec.split("=", 1)
        for reads in args.reads:
            if (str(args.home), name, reads) in done:
                continue
            n_levels, draws = map(int, reads.split("x"))
            t0 = time.time()
            r = audit_whitebox(BASE, reg, args.data, lora=lora, reference=[BASE] * len(shadows),
                               reference_lora=[s.path for s in shadows], t_fracs=levels(n_levels), draws=draws,
                               device="cpu")
            v = r.verdict
            row = {"home": str(args.home), "suspect": name, "lora": lora, "reads": reads,
                   "z": {s.licensee: round(s.z, 2) for s in v.scores}, "named": list(v.named),
                   "p_holm": {s.licensee: s.p_holm for s in v.scores}, "seconds": round(time.time() - t0, 1)}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
