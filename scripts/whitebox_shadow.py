"""White box against a *shadow* reference: the public base fine-tuned by the owner on the clean data.

The product's white box compares the suspect's denoiser with the public base (for a LoRA: LoRA
off). Everything the fine-tune learned then shows up in the residual: the domain, the style,
the owner's images themselves; projected onto a key's pattern that is a model-level offset that
more probes do not average away. The owner can remove most of it by comparing with a model that
learned the same data *without* any mark: the base fine-tuned on the original dataset with the
usual recipe (a "shadow" model). The shadow does not depend on any key, so the decoy null holds.

    .venv/bin/python scripts/whitebox_shadow.py --cells '{"scheme":"spread","rate":0.1,"strength":3.2,"opts":"band=[11,14]"}'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.whitebox import cell_residuals, innocent_models
    from tracemark.trace import content_for, score_copies

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--cells", nargs="+", required=True)
    ap.add_argument("--shadow", default="clean-lora", help="innocent model used as the shadow (innocent_models key)")
    ap.add_argument("--out", default="results/whitebox_shadow.jsonl")
    a = ap.parse_args()
    work = Path(a.work)
    s_dir, s_lora = innocent_models(work)[a.shadow]
    shadow = load_pipeline(s_dir, lora=s_lora, device="cpu", dtype="fp32")
    for spec in a.cells:
        cell, reg, data, copies, subsets, res = cell_residuals(work, json.loads(spec),
                                                               f"residuals_shadow_{a.shadow}.npy", ref_pipe=shadow)
        content = content_for(reg, copies, data)[0]
        truth = set(cell.licensees)
        v = score_copies(list(res), copies, reg, match_files=False, subsets=subsets, n_decoys=1000, alpha=0.01,
                         seed=0, content=content)
        true = [s for s in v.scores if s.licensee in truth]
        others = [s.z for s in v.scores if s.licensee not in truth]
        row = {"cell": cell.name, "shadow": a.shadow, "probes": len(res),
               "z": round(float(np.mean([s.z for s in true])), 3) if true else None,
               "p": max(s.p_value for s in true) if true else None, "named": list(v.named),
               "max_z_innocent": round(max(others), 3)}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
