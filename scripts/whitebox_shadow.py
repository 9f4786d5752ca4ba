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
    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, train_cell
    from tracemark.eval.whitebox import innocent_models
    from tracemark.trace import content_for, score_copies
    from tracemark.whitebox import denoiser_residuals

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
        cell = Cell(**json.loads(spec))
        reg, data, gdir, cdir, *_ = train_cell(work, cell, None, print)
        model_dir, lora = cell_model(work, cell, None)
        copies = reg.copies()
        probes, subsets = _whitebox_probes(copies, reg, data)
        cache = cdir / f"residuals_shadow_{a.shadow}.npy"
        if cache.exists():
            res = np.load(cache)
        else:
            pipe = load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32")
            res = np.stack(denoiser_residuals(pipe, probes, ref_pipe=shadow, reference="base"))
            np.save(cache, res)
        content = content_for(reg, copies, data)[0]
        truth = set(cell.licensees)
        v = score_copies(list(res), copies, reg, match_files=False, subsets=subsets, n_decoys=1000, alpha=0.01,
                         seed=0, content=content)
        true = [s for s in v.scores if s.licensee in truth]
        others = [s.z for s in v.scores if s.licensee not in truth]
        row = {"cell": cell.name, "shadow": a.shadow, "probes": len(probes),
               "z": round(float(np.mean([s.z for s in true])), 3) if true else None,
               "p": max(s.p_value for s in true) if true else None, "named": list(v.named),
               "max_z_innocent": round(max(others), 3)}
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
