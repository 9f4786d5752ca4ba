"""Issue #32: the default path against an abuser's countermeasures before training.

One licensee's copy (the photos key-0 trigger copy of initech from ``bench/bench_default_path.py``,
whose untouched LoRA is named at z 4.81) is attacked with ``tracemark.evaluation.attacks.attack_copy``,
fine-tuned with the product's recipe (``tracemark finetune``, seed 100 as the bench's), and audited
with the default ``tracemark audit BASE --lora L`` in the copy's home. One model per cell: a first
look, not the issue's five. One JSON line per cell, appended to ``--out``; done cells are skipped.

    OMP_NUM_THREADS=2 python -m research.robustness_default --cells jpeg:75 resize_back:0.5 vae:0 img2img:0.2
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
    ap.add_argument("--copy", type=Path, default=Path("results/tmp/default_path/photos/k0trigger_initech"))
    ap.add_argument("--home", type=Path, default=Path("results/tmp/default_path/photos/home_trigger_0"))
    ap.add_argument("--work", type=Path, default=Path("results/tmp/robustness_default"))
    ap.add_argument("--cells", nargs="+", default=["jpeg:75", "resize_back:0.5", "vae:0", "img2img:0.2"])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("results/robustness_default.jsonl"))
    args = ap.parse_args()

    from tracemark.evaluation.attacks import MODEL_ATTACKS, attack_copy

    done = set()
    if args.out.exists():
        done = {(r["attack"], r["param"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    env = {**os.environ, "TRACEMARK_HOME": str(args.home)}
    tm = [sys.executable, "-m", "tracemark"]
    pipe = None
    args.work.mkdir(parents=True, exist_ok=True)
    for cell in args.cells:
        name, param = cell.split(":")
        param = float(param)
        if (name, param) in done:
            continue
        t0 = time.time()
        attacked = args.work / f"{name}_{param:g}"
        if not attacked.exists():
            if name in MODEL_ATTACKS and pipe is None:
                from tracemark.diffusion.loading import load_pipeline

                pipe = load_pipeline(BASE, device="cpu")
            attack_copy(args.copy, attacked, name, param, pipe=pipe if name in MODEL_ATTACKS else None, seed=0)
        t_attack = time.time() - t0
        lora = args.work / f"{name}_{param:g}_lora"
        if not (lora / "pytorch_lora_weights.safetensors").exists():
            subprocess.run(tm + ["finetune", str(attacked), "--base", str(BASE), "--out", str(lora),
                                 "--seed", str(args.seed)], env=env, check=True, capture_output=True)
        t_ft = time.time() - t0 - t_attack
        p = subprocess.run(tm + ["audit", str(BASE), "--lora", str(lora), "--json", "-"], env=env,
                           capture_output=True, text=True)
        if p.returncode not in (0, 3):  # 3: a licensee was named
            raise SystemExit(f"audit failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        v = json.loads(p.stdout)
        row = {"attack": name, "param": param, "copy": str(args.copy), "z": {c["licensee"]: round(c["z"], 2)
                                                                              for c in v["licensees"]},
               "named": v.get("named"), "p_value": v.get("p_value"), "attack_s": round(t_attack, 1),
               "finetune_s": round(t_ft, 1), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
