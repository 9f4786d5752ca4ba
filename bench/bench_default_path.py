"""The product's default path, end to end, over several master keys (issue #28's reliability check).

Exactly what an owner runs, with default options throughout: one owner dataset (`--data DIR`, any
imagefolder, e.g. the real photos or scans of bench/real_data.py; or a CPU-world `--domain`), and
per master key: `tracemark init`, 3 licensees protected (`protect DATA -l X -o C`, only
`--strategy` varied), `tracemark shadow DATA` (default: 2 shadows, the preset's steps), one
licensee's copy fine-tuned by `tracemark finetune` (default recipe), then `tracemark audit BASE --lora L`
with no other flag (the audit plans itself from the registry) for that LoRA (must name that
licensee) and for an innocent LoRA fine-tuned on the clean original (must name nobody). The shadows
and the innocent LoRA are trained once (first key) and registered in the later keys' registries
as `tracemark shadow` would (same files, same digests). One JSON line per key, appended to --out
(resumable: keys already there are skipped).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_default_path.py --keys 8 --out results/default_path.jsonl
    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_default_path.py --data results/tmp/real/photos \
        --strategy ambient --keys 5 --out results/default_path_real.jsonl
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

BASE = Path(__file__).resolve().parents[1] / "testworld" / "tracemark_sim" / "base_model"


def tm(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True, env=env)
    if p.returncode not in (0, 3):
        raise SystemExit(f"tracemark {' '.join(map(str, args))} failed:\n{p.stderr}")
    return p


def fix_key(home: Path, seed: int) -> None:
    from tracemark.registry.database import key_check_value

    master = hashlib.sha256(f"tracemark-default-path|{seed}".encode()).hexdigest()
    (home / "master.key").write_text(master + "\n")
    with sqlite3.connect(home / "registry.sqlite") as conn:
        conn.execute("UPDATE owner SET key_check = ? WHERE id = 1", (key_check_value(bytes.fromhex(master)),))


def copy_shadows(src: Path, dst: Path) -> None:
    """Register the shadows of ``src``'s registry in ``dst``'s (same dataset, same files and digests)."""
    from tracemark.registry.database import Registry

    a, b = Registry(src), Registry(dst)
    try:
        for d in a.datasets():
            for sh in a.shadows(d["name"]):
                sid = b.add_shadow(dataset=sh.dataset, base_path=sh.base_path, base_hash=sh.base_hash,
                                   preset=sh.preset, seed=sh.seed, path=sh.path, recipe=sh.recipe)
                b.finish_shadow(sid, sh.sha256)
    finally:
        a.close()
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--data", type=Path, help="an imagefolder dataset (default: a CPU-world --domain)")
    ap.add_argument("--domain", default="landscapes")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--strategy", default="trigger", choices=["trigger", "ambient"])
    ap.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: the product's preset)")
    ap.add_argument("--work", default=None, help="default: results/tmp/default_path/<dataset>")
    ap.add_argument("--out", default="results/default_path.jsonl")
    args = ap.parse_args()
    name = args.data.name if args.data else args.domain
    work = Path(args.work or f"results/tmp/default_path/{name}")
    out = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{name}|{args.strategy}|{args.steps}"
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((f"{r['domain']}|{r.get('strategy', 'trigger')}|{r['steps']}", r["key"]))
    data = args.data.resolve() if args.data else work / name
    if not data.exists():
        tm(work / "h0", "sim", "make-data", data, "--n", args.n, "--domain", args.domain, "--seed", 11)
    steps = ("--steps", args.steps) if args.steps else ()
    innocent = work / f"innocent{args.steps or ''}"
    if not (innocent / "pytorch_lora_weights.safetensors").exists():
        tm(work / "h0", "finetune", data, "--base", BASE, "--out", innocent, *steps, "--seed", 99)
    shadow_home = work / f"shadows{args.steps or ''}"  # `tracemark shadow` once, registered in every key's home
    if not (shadow_home / "master.key").exists():
        tm(shadow_home, "init")
        tm(shadow_home, "protect", data, "-l", "owner", "-o", work / f"shadow_copy{args.steps or ''}")
    tm(shadow_home, "shadow", data, "--base", BASE, *steps)
    for k in range(args.keys):
        if (tag, k) in done:
            continue
        t0 = time.time()
        home = work / f"home_{args.strategy}{args.steps or ''}_{k}"
        if not (home / "master.key").exists():
            tm(home, "init")
            fix_key(home, k)
        for lic in ("acme", "globex", "initech"):
            if not (work / f"k{k}{args.strategy}_{lic}").exists():
                tm(home, "protect", data, "-l", lic, "-o", work / f"k{k}{args.strategy}_{lic}",
                   "--strategy", args.strategy)
        copy_shadows(shadow_home, home)
        t_tr = time.time()
        abuser = work / f"k{k}{args.strategy}{args.steps or ''}_abuser"
        if not (abuser / "pytorch_lora_weights.safetensors").exists():
            tm(home, "finetune", work / f"k{k}{args.strategy}_initech", "--base", BASE, "--out", abuser, *steps,
               "--seed", 100 + k)
        t_tr = time.time() - t_tr
        row = {"key": k, "domain": name, "strategy": args.strategy, "n": len(read_rows(data)),
               "steps": args.steps, "finetune_s": round(t_tr, 1)}
        for what, lora in (("abuser", abuser), ("innocent", innocent)):
            t1 = time.time()
            p = tm(home, "audit", BASE, "--lora", lora, "--json", "-")
            v = json.loads(p.stdout)
            z = {c["licensee"]: round(c["z"], 2) for c in v["licensees"]}
            row[what] = {"named": v["named"], "p_value": v["p_value"], "z": z, "seconds": round(time.time() - t1, 1)}
        row["seconds"] = round(time.time() - t0, 1)
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def read_rows(data: Path) -> list[str]:
    return [line for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
