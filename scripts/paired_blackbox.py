"""Paired black box: the suspect's generations minus the public base's at the same prompts and seeds.

When the suspect model is in hand (the usual `audit --model` case) the owner picks the seeds, so the
base model (for a LoRA: the same pipeline with the LoRA switched off) can generate the *same*
prompts from the *same* initial noise. Their difference removes the content both share and keeps
what the fine-tune added, including a learned mark. The residuals do not depend on any key, so the
correlation null is unchanged. This script compares, on grid cells and innocent models, the
product's unpaired statistic with the paired one (both with the content projection).

    .venv/bin/python scripts/paired_blackbox.py --n 64 --cells "spread;0.1;6.0;" "spread;0.02;0;" ...
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run(cell_specs, work: Path, n: int, out: Path, innocent_groups: list[str], shadow: bool = False) -> None:
    from tracemark.audit import build_plan
    from tracemark.trace import content_for
    from tracemark.diffusion.generation import _generate_batch
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, train_cell, ensure_group
    from tracemark.eval.whitebox import innocent_models, shadow_model
    from tracemark.trace import score_copies

    jobs = []
    for spec in cell_specs:
        kw = json.loads(spec)
        cell = Cell(**kw)
        reg, data, gdir, cdir, *_ = train_cell(work, cell, None, print)
        model_dir, lora = cell_model(work, cell, None)
        jobs.append((cell.name, model_dir, lora, reg, data, set(cell.licensees)))
    for gspec in innocent_groups:
        g = Cell(**json.loads(gspec))
        reg, data, gdir = ensure_group(work, g, print)
        for name, (model_dir, lora) in innocent_models(work).items():
            if lora is not None:
                jobs.append((f"innocent-{name}@{gdir.name}", model_dir, lora, reg, data, set()))
    ref = None
    if shadow:  # the owner's clean fine-tune, generating the same prompts from the same noise
        sb, sl = shadow_model(work)
        ref = load_pipeline(sb, lora=sl, device="cpu", dtype="fp32")
        ref.set_progress_bar_config(disable=True)
    for name, model_dir, lora, reg, data, truth in jobs:
        t0 = time.perf_counter()
        copies = reg.copies()
        pipe = load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32")
        pipe.set_progress_bar_config(disable=True)
        plan = build_plan(copies, reg, n, 0)
        def gen(p):
            return np.concatenate([_generate_batch(p, plan.prompts[i:i + 32], plan.seeds[i:i + 32], 25, 6.0, "cpu")
                                   for i in range(0, n, 32)]).astype(np.float32)
        s = gen(pipe)
        if ref is None:
            pipe.disable_lora()
        b = gen(ref or pipe)
        row_corr = float(np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(s, b)]))
        content, _ = content_for(reg, copies, data)
        row = {"model": name, "n": n, "reference": "shadow" if ref is not None else "lora-off",
               "corr_suspect_reference": round(row_corr, 3)}
        for kind, ims in (("unpaired", list(s)), ("paired", list(s - b))):
            v = score_copies(ims, copies, reg, match_files=False, subsets=plan.subsets(copies), n_decoys=1000,
                             alpha=0.01, seed=0, content=content)
            true = [x for x in v.scores if x.licensee in truth]
            others = [x for x in v.scores if x.licensee not in truth]
            row[kind] = {"z": round(float(np.mean([x.z for x in true])), 3) if true else None,
                         "p": max(x.p_value for x in true) if true else None,
                         "named": list(v.named), "max_z_innocent": round(max(x.z for x in others), 3)}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="results/tmp/grid")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--cells", nargs="*", default=[], help="Cell(**json) specs")
    ap.add_argument("--innocent", nargs="*", default=[], help="group Cell(**json) specs to audit innocent LoRAs against")
    ap.add_argument("--out", default="results/paired_blackbox.jsonl")
    ap.add_argument("--shadow", action="store_true", help="reference: the shadow model (eval.whitebox.shadow_model)")
    a = ap.parse_args()
    run(a.cells, Path(a.work), a.n, Path(a.out), a.innocent, a.shadow)
