"""White-box z of the true licensee at one noise level at a time, for grid cells (and innocent models).

The audit probes the suspect's denoiser at t = 0.3 / 0.5 / 0.7 of the schedule. A fine-tune that
*memorised* its marked samples shows them best where the noisy input still identifies the image
(low t): this script runs the product's ``audit_whitebox`` with a single ``t_fracs`` value per row,
against the shadow reference and the LoRA-off reference, and appends one JSON line per cell.

    .venv/bin/python scripts/whitebox_timesteps.py --t 0.02 0.05 0.1 0.3 \
        --cells '{"scheme":"spread","rate":0.02,"strength":3.2,"opts":"band=[11,14]","selection":"visual","seed":1}'
    .venv/bin/python scripts/whitebox_timesteps.py --t 0.02 --innocent '{"scheme":"spread","rate":0.02}'

Cells default to ``scope="dataset"`` (the grid's white-box runs). ``--innocent GROUP``: the three
innocent models of :mod:`tracemark.eval.whitebox` audited against the group's 100 copies (max z
over licensees, and who is named).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    import torch

    from tracemark.audit import audit_whitebox
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, cell_model, ensure_group, train_cell
    from tracemark.eval.whitebox import innocent_models, shadow_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", nargs="*", default=[], help="Cell fields as JSON")
    ap.add_argument("--innocent", nargs="*", default=[], help="groups (Cell fields as JSON) to audit the innocent models against")
    ap.add_argument("--t", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.3])
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--refs", nargs="+", default=["shadow", "loraoff"])
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--out", type=Path, default=Path("results/whitebox_timesteps.jsonl"))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ref, ref_lora = shadow_model(a.work)
    rp = load_pipeline(ref, lora=ref_lora, device="cpu", dtype="fp32") if "shadow" in a.refs else None

    def scan(model_dir, lora, reg, data) -> dict:
        pipe = load_pipeline(model_dir, lora=lora, device="cpu", dtype="fp32")
        rows = {}
        for t in a.t:
            for name in a.refs:
                kw = dict(reference=ref, reference_lora=ref_lora, ref_pipe=rp) if name == "shadow" else {}
                rows[f"{name}@{t:g}"] = audit_whitebox(model_dir, reg, data, lora=lora, pipe=pipe, t_fracs=(t,),
                                                      draws=a.draws, **kw).verdict
        return rows

    for spec in a.cells:
        cell = Cell(**{"scope": "dataset", **json.loads(spec)})
        reg, data, *_ = train_cell(a.work, cell, None, print)
        model_dir, lora = cell_model(a.work, cell, None)
        truth = set(cell.licensees)
        out = {}
        for k, v in scan(model_dir, lora, reg, data).items():
            true = [s for s in v.scores if s.licensee in truth]
            out[k] = {"z": round(true[0].z, 3), "p": true[0].p_value, "named": v.named,
                      "max_z_innocent": round(max(s.z for s in v.scores if s.licensee not in truth), 3)}
        row = {"cell": cell.name, "draws": a.draws, "finished": time.strftime("%Y-%m-%d %H:%M"), **out}
        print(json.dumps(row), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    for spec in a.innocent:
        g = Cell(**{"scope": "dataset", **json.loads(spec)})
        reg, data, gdir = ensure_group(a.work, g, print)
        for name, (model_dir, lora) in innocent_models(a.work).items():
            if lora is None and "loraoff" in a.refs:
                refs, a.refs = a.refs, [r for r in a.refs if r != "loraoff"]
            else:
                refs = a.refs
            out = {k: {"max_z": round(max(s.z for s in v.scores), 3), "named": v.named}
                   for k, v in scan(model_dir, lora, reg, data).items()}
            a.refs = refs
            row = {"cell": f"innocent-{name}", "group": gdir.name, "draws": a.draws,
                   "finished": time.strftime("%Y-%m-%d %H:%M"), **out}
            print(json.dumps(row), flush=True)
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
