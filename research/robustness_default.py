"""Issue #32: the default path against an abuser's countermeasures before training.

One licensee's copy (the photos key-0 trigger copy of initech from ``bench/bench_default_path.py``,
whose untouched LoRA is named at z 4.81) is attacked with ``tracemark.evaluation.attacks.attack_copy``,
fine-tuned with the product's recipe (``tracemark finetune``, seed 100 as the bench's), and audited
with the default ``tracemark audit BASE --lora L`` in the copy's home. ``--models K:SEED ...``: each
model is the key-K trigger copy of initech (its own home and master key, ``home_trigger_K``) attacked
with attack seed K and fine-tuned with seed SEED; the default, ``0:100``, is the first look's one
model. One JSON line per (cell, model), appended to ``--out``; done ones are skipped (resumable).

    OMP_NUM_THREADS=2 python -m research.robustness_default --cells jpeg:75 resize_back:0.5 vae:0 img2img:0.2
    OMP_NUM_THREADS=2 python -m research.robustness_default --cells jpeg:75 --models 0:100 1:100 2:100 0:101 1:101
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BASE = Path("testworld/tracemark_sim/base_model")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("results/tmp/default_path/photos"),
                    help="bench_default_path's work folder: kKtrigger_initech copies, home_trigger_K homes")
    ap.add_argument("--models", nargs="+", default=["0:100"], help="KEY:FINETUNE_SEED per model")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/robustness_default"))
    ap.add_argument("--cells", nargs="+", default=["jpeg:75", "resize_back:0.5", "vae:0", "img2img:0.2"])
    ap.add_argument("--out", type=Path, default=Path("results/robustness_default.jsonl"))
    args = ap.parse_args()

    from tracemark.evaluation.attacks import MODEL_ATTACKS, attack_copy

    done = set()
    if args.out.exists():  # rows without a key and seed are the first look's model, 0:100
        done = {(r["attack"], r["param"], r.get("key", 0), r.get("seed", 100))
                for r in map(json.loads, args.out.read_text().splitlines()) if r}
    tm = [sys.executable, "-m", "tracemark"]
    pipe = None
    args.work.mkdir(parents=True, exist_ok=True)
    todo = [(c, *map(int, m.split(":"))) for c in args.cells for m in args.models]
    for cell, key, seed in todo:
        name, param = cell.split(":")
        param = float(param)
        if (name, param, key, seed) in done:
            continue
        copy, home = args.root / f"k{key}trigger_initech", args.root / f"home_trigger_{key}"
        env = {**os.environ, "TRACEMARK_HOME": str(home)}
        t0 = time.time()
        tag = f"{name}_{param:g}" + ("" if key == 0 else f"_k{key}")  # key 0: the first look's folders
        attacked = args.work / tag
        if not attacked.exists() and name != "none":
            if name in MODEL_ATTACKS and pipe is None:
                from tracemark.diffusion.loading import load_pipeline

                pipe = load_pipeline(BASE, device="cpu")
            attack_copy(copy, attacked, name, param, pipe=pipe if name in MODEL_ATTACKS else None, seed=key)
        t_attack = time.time() - t0
        lora = args.work / (f"{tag}_lora" + ("" if seed == 100 else f"_s{seed}"))
        if not (lora / "pytorch_lora_weights.safetensors").exists():
            subprocess.run(tm + ["finetune", str(copy if name == "none" else attacked), "--base", str(BASE),
                                 "--out", str(lora), "--seed", str(seed)], env=env, check=True, capture_output=True)
        t_ft = time.time() - t0 - t_attack
        p = subprocess.run(tm + ["audit", str(BASE), "--lora", str(lora), "--json", "-"], env=env,
                           capture_output=True, text=True)
        if p.returncode not in (0, 3):  # 3: a licensee was named
            raise SystemExit(f"audit failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        v = json.loads(p.stdout)
        own = next(c for c in v["licensees"] if c["licensee"] == "initech")
        row = {"attack": name, "param": param, "copy": str(copy), "key": key, "seed": seed,
               "z": {c["licensee"]: round(c["z"], 2) for c in v["licensees"]},
               "licensee_p": own["p_value"], "licensee_p_holm": own["p_holm"], "named": v.get("named"), "p_value": v.get("p_value"), "attack_s": round(t_attack, 1),
               "finetune_s": round(t_ft, 1), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
