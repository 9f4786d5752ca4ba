"""Lever 1 of issue #32: a white-box statistic normalised by how strongly the suspect fits the clean data.

    python -m research.whitebox_fit --home HOME --base BASE --data ORIGINAL \
        --suspect abuser=LORA1 --suspect official=LORA2 --cache DIR --out rows.jsonl


For LoRA suspects on one base: per probe (every marked sample of every copy), latent loss gradients
g_S (suspect), g_0 (base = LoRA off), g_k (each registered shadow); the base and shadow passes do not
depend on the suspect and are computed once. Statistics, each scored by the product's score_copies:
  shadow  : mean_k unit_rms(J^T (g_S - g_k))           (the product's default today)
  fit     : unit_rms(J^T (d_S - beta d_R)), d_S = g_S - g_0, d_R = mean_k g_k - g_0,
            beta = <d_S, d_R> / <d_R, d_R> over all probes (key-independent: the null is kept)
  loraoff : unit_rms(J^T (g_S - g_0))
  contrast_off, contrast_shadow: the same with each model's gradient taken as the trigger contrast
            g(caption with the word) - g(caption without it): what the word adds, not the domain
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from tracemark.audit.whitebox import whitebox_probes
from tracemark.diffusion.loading import load_pipeline
from tracemark.registry.database import Registry
from tracemark.detection.scoring import content_for, score_copies
from tracemark.diffusion.denoiser import Probe, latent_loss_gradients, pull_back, shadow_statistic, unit_rms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--suspect", action="append", required=True, help="NAME=LORA_DIR (repeat)")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    reg = Registry(args.home)
    copies = reg.copies()
    probes, subsets = whitebox_probes(copies, reg, args.data)
    content = content_for(reg, copies, args.data)[0]
    args.cache.mkdir(parents=True, exist_ok=True)
    shadows = reg.shadows(copies[0].dataset)

    def cached(name, fn):
        p = args.cache / f"{name}.npy"
        if p.exists():
            return np.load(p)
        t = time.time()
        g = fn()
        np.save(p, g)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
        return g

    base = load_pipeline(args.base)
    g0 = cached("base", lambda: latent_loss_gradients(base, probes))
    gk = [cached(f"shadow{sh.seed}",
                 lambda sh=sh: latent_loss_gradients(base, probes, load_pipeline(args.base, lora=sh.path)))
          for sh in shadows]
    gR = np.mean(gk, axis=0)
    # the trigger contrast: every model read again with each trigger probe's caption minus the word
    # (ambient probes have none: their contrast is zero and carries nothing)
    plain = [Probe(p.image, p.plain if p.plain is not None else p.prompt) for p in probes]
    g0p = cached("base_plain", lambda: latent_loss_gradients(base, plain))
    gkp = [cached(f"shadow{sh.seed}_plain",
                  lambda sh=sh: latent_loss_gradients(base, plain, load_pipeline(args.base, lora=sh.path)))
           for sh in shadows]
    for spec in args.suspect:
        name, lora = spec.split("=", 1)

        def suspect(lora=lora):
            return latent_loss_gradients(load_pipeline(args.base, lora=lora), probes)

        gS = cached(f"suspect_{name}", suspect)
        gSp = cached(f"suspect_{name}_plain",
                     lambda lora=lora: latent_loss_gradients(load_pipeline(args.base, lora=lora), plain))
        cS = gS - gSp
        dS, dR = gS - g0, gR - g0
        beta = float((dS * dR).sum() / (dR * dR).sum())
        stats = {
            "shadow": shadow_statistic(base, probes, gS, gk),
            "fit": unit_rms(pull_back(base, probes, dS - beta * dR)),
            "loraoff": unit_rms(pull_back(base, probes, dS)),
            "contrast_off": unit_rms(pull_back(base, probes, cS - (g0 - g0p))),
            "contrast_shadow": [a / len(gk) for a in np.sum([unit_rms(pull_back(base, probes, cS - (g - gp)))
                                                             for g, gp in zip(gk, gkp)], axis=0)],
        }
        row = {"suspect": name, "lora": lora, "beta": round(beta, 3),
               "fit_ratio": round(float(np.linalg.norm(dS) / np.linalg.norm(dR)), 3)}
        for k, res in stats.items():
            v = score_copies(res, copies, reg, match_files=False, subsets=subsets, content=content,
                             at=[p.image for p in probes])
            d = v.to_dict()
            row[k] = {"named": list(v.named), "p": float(v.p_value),
                      "z": {s["licensee"]: round(s["z"], 2) for s in d["scores"]}}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
