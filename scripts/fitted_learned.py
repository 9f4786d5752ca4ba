"""Experiment: how much of a copy's own pattern did each model learn? (issue #12, lever 1 analysis)

``scripts/fitted_pattern.py`` concentrates the pattern's energy on a few band coefficients, which
lowers what the product's *unweighted* sign detector reads per file; so its white-box z mixes two
things: how much of the pattern the fine-tune learned, and how well the detector reads it. This
script measures the first alone, with a matched filter and an empirical null:

for each model ``m`` (a variant's cell at seed ``s_m``, trained on licensee ``s_m``'s copy) and
each key ``k`` among the variant's seeds, the shadow-referenced white-box residuals at licensee
``k``'s marked samples (their trigger prompts), projected on ``k``'s own pattern in the scheme's
DCT band: ``f = <R, P_k> / <P_k, P_k>`` (the fraction of the pattern present, 1 = all of it).
Diagonal (``k == s_m``): what the model learned of its own copy's pattern. Off-diagonal: the same
statistic for patterns the model never saw, i.e. its null. z = (diagonal - off mean) / off sd.

    python scripts/fitted_learned.py --variants baseline fittedmax --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def band_coeffs(images: np.ndarray, scheme) -> np.ndarray:
    """Band DCT coefficients (n x 3B) of H x W x 3 arrays at the scheme's grid."""
    from scipy.fft import dctn

    from tracemark.schemes.spread import to_grid

    out = []
    for im in images:
        g = to_grid(np.asarray(im, dtype=np.float32), scheme.grid)
        out.append(np.concatenate([dctn(g[..., c], norm="ortho")[scheme._mask] for c in range(3)]))
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--variants", nargs="+", default=["baseline", "fittedmax"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--spec", default='{"scheme":"spread","rate":0.02,"strength":3.2,"selection":"visual"}')
    ap.add_argument("--out", type=Path, default=Path("results/fitted_learned.jsonl"))
    args = ap.parse_args()

    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.eval.grid import Cell, ensure_group
    from tracemark.eval.whitebox import shadow_model
    from tracemark.schemes import get_scheme
    from tracemark.sim import default_base_path
    from tracemark.trace import scheme_params
    from tracemark.whitebox import denoiser_residuals

    base = default_base_path()
    ref, ref_lora = shadow_model(args.work, base)
    ref_pipe = load_pipeline(ref, lora=ref_lora, device="cpu", dtype="fp32")
    spec = json.loads(args.spec)
    reg, data, gdir = ensure_group(args.work, Cell(**spec, seed=0))
    copies = {c.licensee: c for c in reg.copies()}
    for variant in args.variants:
        suffix = {"baseline": "", "fitted": "-fitted", "fittedmax": "-fittedmax"}[variant]
        models, pats, probes = {}, {}, {}
        for s in args.seeds:
            cell = Cell(**spec, seed=s)
            cdir = args.work / "cells" / (cell.name + suffix)
            if not ((cdir / "model" / "pytorch_lora_weights.safetensors").exists()):
                continue
            lic = cell.licensees[0]
            c = copies[lic]
            scheme = get_scheme(c.scheme, **scheme_params(c))
            key = reg.key_for_copy(c)
            pat = np.load(cdir / "pattern.npy") if suffix else scheme.strength * scheme.pattern(key, 32, 32)
            models[s] = cdir / "model"
            pats[s] = band_coeffs(pat[None], scheme)[0]
            probes[s] = _whitebox_probes([c], reg, data)[0]  # the audit's probes: original + trigger caption
        if not models:
            continue
        f = {}
        for m, lora in models.items():
            pipe = load_pipeline(base, lora=lora, device="cpu", dtype="fp32")
            for k in models:
                res = np.stack(denoiser_residuals(pipe, probes[k], ref_pipe=ref_pipe, reference="base"))
                r = band_coeffs(res, scheme).mean(axis=0)
                f[(m, k)] = float(r @ pats[k] / (pats[k] @ pats[k]))
        seeds = sorted(models)
        off = np.array([f[(m, k)] for m in seeds for k in seeds if m != k])
        diag = {m: f[(m, m)] for m in seeds}
        sd = float(off.std(ddof=1)) if len(off) > 1 else float("nan")
        row = {"variant": variant, "seeds": seeds, "diag": {m: round(v, 4) for m, v in diag.items()},
               "off_mean": round(float(off.mean()), 4), "off_sd": round(sd, 4), "n_off": len(off),
               "z": {m: round((v - float(off.mean())) / sd, 2) for m, v in diag.items()},
               "diag_mean": round(float(np.mean(list(diag.values()))), 4)}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
