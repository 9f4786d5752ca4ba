"""False accusations of the default white-box audit on innocent models, over many simulated audits.

A real audit of an innocent LoRA costs a pass of every model over its copies' marked samples. Here
every model's loss gradients (:func:`tracemark.diffusion.denoiser.latent_loss_gradients`) are computed once
for EVERY sample of the owner's dataset (cached as .npy), then each simulated audit draws ``--copies``
copies the way ``protect`` does by default (the visual selection of a fresh random key,
:func:`tracemark.marking.protect.marked_count` samples: 2% raised to 50), builds the default statistic
(``mean_k unit_rms(J^T (g_S - g_k))`` over the shadows k, as :func:`tracemark.audit.whitebox.audit_whitebox`)
on those samples, scores each copy's fresh random pattern against ``--decoys`` decoys
(:func:`tracemark.detection.stats.test_keys`) and applies Holm over the copies. The fraction of audits naming
anyone at ``--alpha`` is the false-accusation rate, with its Clopper-Pearson 95% interval.

Strategies: ``ambient`` probes every sample with its own caption (exactly what the audit does);
``trigger`` probes it behind a trigger word, one of ``--words`` fresh words drawn per copy (a copy's
real trigger word is a keyed nonsense word the innocent model never saw; these are such words).

    python -m research.calibrate_default --data results/tmp/real/photos --base testworld/tracemark_sim/base_model \\
        --shadow S1 --shadow S2 --innocent clean=LORA --innocent other=LORA2 --audits 200 \\
        --cache results/tmp/calib/photos --out results/calibration_default.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta

from tracemark.detection import stats
from tracemark.io.dataset import content_sample, load_dataset, read_image_rgb
from tracemark.diffusion.loading import load_pipeline
from tracemark.registry.keys import Key
from tracemark.marking.protect import DEFAULT_MIN_MARKED, DEFAULT_RATE, marked_count
from tracemark.marking.schemes import get_scheme
from tracemark.marking.selection import SELECTION_VERSION, image_thumbnails, select_samples
from tracemark.marking.trigger import apply_trigger
from tracemark.diffusion.denoiser import Probe, latent_loss_gradients, shadow_statistic

WORDS = ("zulopamek", "vantriquor", "osmebrality", "keftuvania")


def gradients(path: Path, base: Path, lora: str | None, probes: list[Probe], vae_pipe) -> np.ndarray:
    if path.exists():
        return np.load(path)
    t = time.time()
    model = load_pipeline(base, lora=lora) if lora else None
    g = latent_loss_gradients(vae_pipe, probes, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, g)
    print(f"{path.name}: {len(probes)} probes, {time.time() - t:.0f} s", flush=True)
    return g


def clopper_pearson(k: int, n: int) -> list[float]:
    lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return [round(float(lo), 4), round(float(hi), 4)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--shadow", action="append", required=True, help="a shadow LoRA folder (repeat)")
    ap.add_argument("--innocent", action="append", required=True, help="NAME=LORA folder (repeat)")
    ap.add_argument("--strategy", choices=["ambient", "trigger"], nargs="+", default=["ambient", "trigger"])
    ap.add_argument("--words", type=int, default=2, help="trigger words (each costs a pass per model)")
    ap.add_argument("--audits", type=int, default=200)
    ap.add_argument("--copies", type=int, nargs="+", default=[3, 100])
    ap.add_argument("--decoys", type=int, default=1000)
    ap.add_argument("--alpha", type=float, nargs="+", default=[1e-2, 1e-3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    samples = load_dataset(args.data).samples
    names, captions = [s.file_name for s in samples], [s.text for s in samples]
    images = [read_image_rgb(s.path) for s in samples]
    k = marked_count(len(samples), DEFAULT_RATE, DEFAULT_MIN_MARKED)
    rate = k / len(samples)
    thumbs = image_thumbnails([s.path for s in samples])
    sch = get_scheme("spread")
    basis = stats.content_basis(sch.features(content_sample(args.data)))
    vae_pipe = load_pipeline(args.base)
    for strategy in args.strategy:
        words = [None] if strategy == "ambient" else list(WORDS[:args.words])
        feats: dict[tuple[str, str | None], np.ndarray] = {}
        for w in words:
            probes = [Probe(im, apply_trigger(c, w) if w else c) for im, c in zip(images, captions)]
            tag = w or "plain"
            g_sh = [gradients(args.cache / f"shadow{j}_{tag}.npy", args.base, s, probes, vae_pipe)
                    for j, s in enumerate(args.shadow)]
            for spec in args.innocent:
                name, lora = spec.split("=", 1)
                g_s = gradients(args.cache / f"{name}_{tag}.npy", args.base, lora, probes, vae_pipe)
                feats[(name, w)] = sch.features(shadow_statistic(vae_pipe, probes, g_s, g_sh))
        for spec in args.innocent:
            name = spec.split("=", 1)[0]
            for n_copies in args.copies:
                rng = np.random.default_rng(args.seed)
                named = {a: 0 for a in args.alpha}
                below, n_keys, zmax = 0, 0, []
                t0 = time.time()
                for _ in range(args.audits):
                    decoys = sch.random_vectors(args.decoys, rng)
                    p = []
                    for _ in range(n_copies):
                        idx = [names.index(x) for x in select_samples(
                            Key(rng.bytes(32)), names, captions, rate, "visual", thumbnails=thumbs,
                            selection_version=SELECTION_VERSION)]
                        F = feats[(name, words[int(rng.integers(len(words)))])][idx]
                        r = stats.test_keys(F, sch.random_vectors(1, rng), decoys, sch.kind, basis)
                        p.append(float(r.p_value[0]))
                    p = np.array(p)
                    h = stats.holm(p)
                    for a in args.alpha:
                        named[a] += bool((h < a).any())
                    below += int((p < 1e-3).sum())
                    n_keys += len(p)
                    zmax.append(float(-np.log10(p.min())))
                row = {"data": args.data.name, "strategy": strategy, "innocent": name, "copies": n_copies,
                       "audits": args.audits, "marked": k, "shadows": len(args.shadow),
                       "named": {str(a): named[a] for a in args.alpha},
                       "false_accusation_rate": {str(a): named[a] / args.audits for a in args.alpha},
                       "ci95": {str(a): clopper_pearson(named[a], args.audits) for a in args.alpha},
                       "keys_p_below_1e-3": below, "keys": n_keys, "expected_below_1e-3": n_keys * 1e-3,
                       "words": len(words), "seconds": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
