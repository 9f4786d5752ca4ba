"""False-positive rate of audits on innocent models (issue: FPR at alpha=0.01 <= 0.01 over >= 200 audits).

    python -m research.eval.calibration [--trials 300] [--n 64] [--out results/calibration.csv]

Innocent models: the base without fine-tuning, the base fine-tuned (LoRA) on the unprotected owner
data, and the base fine-tuned on *another* owner's protected copy. For each model, 64 images are
generated once with an audit's query plan (trigger + marked captions of a registry of 3
licensees). Each trial then draws a fresh owner master key, derives 3 licensee keys, and runs the
audit's test (decoy-calibrated z, Holm over the 3 licensees) on those images.

Why reusing the images is valid: a fresh master key is independent of the images, so for every
trial the statistic of each key is exactly standard normal given the images; the false-positive
rate estimated over trials is unbiased. (Trials share images, so they are not independent; keys
are nearly orthogonal in D >= 300 dimensions, so their statistics are nearly uncorrelated and
the binomial confidence interval is close.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tracemark.detection import stats
from research.eval.common import append_row, read_folder
from tracemark.registry.keys import derive_key
from tracemark.marking.protect import protect
from tracemark.registry.database import Registry
from tracemark.marking.schemes import get_scheme


def main(argv=None) -> None:
    from tracemark.audit.plan import build_plan
    from tracemark_sim import default_base_path, finetune, generate, make_dataset
    from tracemark_sim.pipeline import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps of the innocent models")
    ap.add_argument("--gen-steps", type=int, default=25, help="sampling steps of the generated images")
    ap.add_argument("--n-data", type=int, default=1000, help="images of each owner dataset")
    ap.add_argument("--base", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("results/tmp/calibration"))
    ap.add_argument("--out", type=Path, default=Path("results/calibration.csv"))
    args = ap.parse_args(argv)
    base = args.base or default_base_path()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    owner = work / "owner"
    if not owner.exists():
        make_dataset(owner, args.n_data, "faces", seed=11)
    other = work / "other_owner"
    if not other.exists():
        make_dataset(other, args.n_data, "faces", seed=12)
    # the auditing owner's registry (3 trigger licensees) gives the query plan's prompts
    home = work / "home"
    if not home.exists():
        reg = Registry.init(home)
        for lic in ("a", "b", "c"):
            protect(owner, work / f"copy_{lic}", lic, registry=reg, rate=0.02, workers=1)
    reg = Registry(home)
    # another owner's protected copy, to fine-tune an innocent (to us) model on
    other_home = work / "other_home"
    if not other_home.exists():
        oreg = Registry.init(other_home)
        protect(other, work / "other_copy", "x", registry=oreg, rate=0.1, workers=1)
    models = {"base": (base, None)}
    for name, data in (("ft_clean", owner), ("ft_other_owner", work / "other_copy")):
        out = work / name
        if not (out / "pytorch_lora_weights.safetensors").exists():
            finetune(data, base, out, method="lora", steps=args.steps, seed=3,
                     resume=(out / "checkpoints" / "last.pt").exists())
        models[name] = (base, out)
    copies = reg.copies()
    plan = build_plan(copies, reg, args.n, seed=0)
    sch = get_scheme("spread")
    rows = []
    for name, (mdir, lora) in models.items():
        gen = work / f"gen_{name}"
        if not gen.exists():
            pipe = load_pipeline(mdir, lora=lora)
            generate(None, plan.prompts, args.n, gen, seed=plan.seeds[0], pipe=pipe, steps=args.gen_steps)
        F = sch.features(read_folder(gen))
        subsets = plan.subsets(copies)
        rng = np.random.default_rng(0)
        decoys = sch.random_vectors(1000, rng)
        fp = 0
        pmins = []
        for t in range(args.trials):
            master = rng.bytes(32)
            pv = []
            for c in copies:
                key = derive_key(master, c.dataset, c.licensee)
                res = stats.test_keys(F[subsets[c.id]], sch.key_vectors([key]), decoys, sch.kind)
                pv.append(res.p_value[0])
            ph = stats.holm(np.array(pv))
            pmins.append(ph.min())
            fp += ph.min() < args.alpha
        lo, hi = stats.binomial_ci(fp, args.trials)
        # the real registry's keys on the same images (the owner's actual audit of this model)
        pv = [stats.test_keys(F[subsets[c.id]], sch.key_vectors([reg.key_for_copy(c)]), decoys, sch.kind).p_value[0]
              for c in copies]
        row = {"model": name, "trials": args.trials, "alpha": args.alpha, "false_positives": fp,
               "fpr": fp / args.trials, "ci_low": round(lo, 4), "ci_high": round(hi, 4),
               "frac_p_below_0.1": float(np.mean(np.array(pmins) < 0.1)),
               "owner_audit_min_p_holm": float(stats.holm(np.array(pv)).min()), "n_images": args.n,
               "finished": time.strftime("%Y-%m-%d %H:%M")}
        append_row(args.out, row)
        rows.append(row)
        print(f"{name}: {fp}/{args.trials} false positives at alpha {args.alpha} (FPR {fp / args.trials:.4f}, "
              f"95% CI {lo:.4f}-{hi:.4f}); the owner's own audit: min Holm p {row['owner_audit_min_p_holm']:.3f}",
              flush=True)
    total = sum(r["false_positives"] for r in rows)
    n = sum(r["trials"] for r in rows)
    lo, hi = stats.binomial_ci(total, n)
    print(f"all innocent models: {total}/{n} false positives (FPR {total / n:.4f}, 95% CI {lo:.4f}-{hi:.4f})")


if __name__ == "__main__":
    main()
