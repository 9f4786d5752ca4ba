"""The product's default path, end to end, over several master keys (issue #28's reliability check).

One owner dataset (CPU world, `--domain`, never tuned on), one shadow fine-tune of the bundled base
on the clean data, and one innocent LoRA (the clean data, another seed) are made once; then for each
master key: 3 licensees protected with the DEFAULT options, an abuser's LoRA on the third one's copy
(`tracemark finetune`), and two white-box audits against the shadow: the abuser's LoRA (must name
that licensee) and the innocent LoRA (must name nobody). One JSON line per key, appended to --out
(resumable: keys already there are skipped).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_default_path.py --keys 8 --out results/default_path.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parents[1] / "tracemark" / "sim" / "base_model"


def tm(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True, env=env)
    if p.returncode not in (0, 3):
        raise SystemExit(f"tracemark {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def fix_key(home: Path, seed: int) -> None:
    from tracemark.registry import key_check_value

    master = hashlib.sha256(f"tracemark-default-path|{seed}".encode()).hexdigest()
    (home / "master.key").write_text(master + "\n")
    with sqlite3.connect(home / "registry.sqlite") as conn:
        conn.execute("UPDATE owner SET key_check = ? WHERE id = 1", (key_check_value(bytes.fromhex(master)),))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--domain", default="landscapes")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", default="results/tmp/default_path")
    ap.add_argument("--out", default="results/default_path.jsonl")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()
    data = work / args.domain
    if not data.exists():
        tm(work / "h0", "sim", "make-data", data, "--n", args.n, "--domain", args.domain, "--seed", 11)
    shadow, innocent = work / "shadow", work / "innocent"
    if not (shadow / "pytorch_lora_weights.safetensors").exists():
        tm(work / "h0", "finetune", data, "--base", BASE, "--out", shadow, "--steps", args.steps, "--seed", 1)
    if not (innocent / "pytorch_lora_weights.safetensors").exists():
        tm(work / "h0", "finetune", data, "--base", BASE, "--out", innocent, "--steps", args.steps, "--seed", 99)
    for k in range(args.keys):
        if k in done:
            continue
        t0 = time.time()
        home = work / f"home{k}"
        tm(home, "init")
        fix_key(home, k)
        for lic in ("acme", "globex", "initech"):
            tm(home, "protect", data, "-l", lic, "-o", work / f"k{k}_{lic}")
        abuser = work / f"k{k}_abuser"
        tm(home, "finetune", work / f"k{k}_initech", "--base", BASE, "--out", abuser, "--steps", args.steps,
           "--seed", 100 + k)
        row = {"key": k, "domain": args.domain, "n": args.n, "steps": args.steps}
        for what, lora in (("abuser", abuser), ("innocent", innocent)):
            p = tm(home, "audit", BASE, "--lora", lora, "--dataset", args.domain, "--reference", BASE,
                   "--reference-lora", shadow, "--json", "-")
            v = json.loads(p.stdout)
            z = {c["licensee"]: round(c["z"], 2) for c in v["licensees"]}
            row[what] = {"named": v["named"], "p_value": v["p_value"], "z": z}
        row["seconds"] = round(time.time() - t0, 1)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
