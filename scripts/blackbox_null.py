"""False-accusation rate of the black-box audit statistic on innocent models, with and without the
content projection: each innocent model generates n images (dataset captions behind a trigger word
no copy uses), then each simulated audit draws 100 random keys and 1000 decoys and applies Holm.

    .venv/bin/python scripts/blackbox_null.py --work results/tmp/grid --audits 200

Innocent models: those of `python -m tracemark.eval.whitebox --innocent` (base, clean LoRA,
another owner's LoRA). Writes results/blackbox_null.json.

``--shadow``: the *paired* statistic instead: each image minus the shadow reference's image
(`tracemark.eval.whitebox.shadow_model`) at the same prompt and seed (scripts/paired_blackbox.py);
writes results/blackbox_null_shadow.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import beta

from tracemark import stats
from tracemark.dataset import content_sample, load_dataset
from tracemark.diffusion import generate_images, load_pipeline
from tracemark.eval.whitebox import innocent_models
from tracemark.schemes import get_scheme
from tracemark.strategies import apply_trigger


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--audits", type=int, default=200)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--shadow", action="store_true", help="score suspect-minus-shadow images at the same seeds")
    args = ap.parse_args(argv)
    args.out = args.out or Path("results/blackbox_null_shadow.json" if args.shadow else "results/blackbox_null.json")
    shadow = None
    if args.shadow:
        from tracemark.eval.whitebox import shadow_model

        sb, sl = shadow_model(args.work)
        shadow = load_pipeline(sb, lora=sl)
    data = args.work / "data" / "faces_1000_11"
    caps = [s.text for s in load_dataset(data).samples]
    sch = get_scheme("spread")
    basis = stats.content_basis(sch.features(content_sample(data)))
    out = {}
    for name, (model, lora) in innocent_models(args.work).items():
        rng = np.random.default_rng(0)
        prompts = [apply_trigger(caps[i], "zulopamek") for i in rng.choice(len(caps), args.n, replace=False)]
        ims = generate_images(load_pipeline(model, lora=lora), prompts, seed=9000).astype(np.float32)
        if shadow is not None:
            ims = ims - generate_images(shadow, prompts, seed=9000).astype(np.float32)
        F = sch.features(list(ims))
        for label, B in (("raw", None), ("projected", basis)):
            rng = np.random.default_rng(1)
            named = 0
            for _ in range(args.audits):
                r = stats.test_keys(F, sch.random_vectors(100, rng), sch.random_vectors(1000, rng), "correlation", B)
                named += bool((stats.holm(r.p_value) < 0.01).any())
            lo = beta.ppf(0.025, named, args.audits - named + 1) if named else 0.0
            hi = beta.ppf(0.975, named + 1, args.audits - named)
            out[f"{name}/{label}"] = {"audits": args.audits, "false_accusations": named,
                                      "rate": named / args.audits, "ci95": [round(float(lo), 4), round(float(hi), 4)]}
            print(name, label, out[f"{name}/{label}"], flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
