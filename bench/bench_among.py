"""Named among many licensees: the default audit of one abuser's LoRA when the registry holds
``--licensees`` copies of the dataset instead of 3 (issue #28's "named among 100").

Starts from a home of bench/bench_default_path.py (3 licensees, the abuser's copy among them, the
shadows registered), copies it (the original is left as it was), issues the missing licensees with
`tracemark protect DATA -l licNNN -o TMP` at the defaults and the same ``--strategy`` (the copy's
files are deleted after issue: the audit reads the owner's original data, the registry keeps the
rest), then runs `tracemark audit BASE --lora L --json -` with no other flag, for the abuser and for
the innocent LoRA. One JSON line per (home, licensees) appended to --out; resumable (licensees
already in the copied registry are not issued again).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_among.py --home results/tmp/default_path/photos/home_ambient_0 \\
        --data results/tmp/real/photos --strategy ambient --licensees 100 \\
        --lora results/tmp/default_path/photos/k0ambient_abuser --innocent results/tmp/default_path/photos/innocent \\
        --out results/among100.jsonl

Cost: white-box probes are one per distinct (marked sample, prompt); an ambient copy prompts with
the sample's own caption, so 100 ambient copies of a 600-image dataset share at most 600 probes; a
trigger copy prompts behind its own word, so 100 trigger copies need 100 x the marked samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path

from bench_default_path import BASE, tm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True, help="a bench_default_path home (left untouched)")
    ap.add_argument("--data", type=Path, required=True, help="the owner's original dataset")
    ap.add_argument("--strategy", choices=["trigger", "ambient"], required=True)
    ap.add_argument("--licensees", type=int, default=100)
    ap.add_argument("--lora", type=Path, required=True, help="the abuser's LoRA")
    ap.add_argument("--innocent", type=Path, help="an innocent LoRA, audited the same way")
    ap.add_argument("--out", type=Path, default=Path("results/among100.jsonl"))
    args = ap.parse_args()

    home = args.home.with_name(f"{args.home.name}_among{args.licensees}")
    if not (home / "master.key").exists():
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(args.home, home)
    with sqlite3.connect(home / "registry.sqlite") as conn:
        have = {r[0] for r in conn.execute("SELECT l.name FROM copies c JOIN licensees l ON l.id = c.licensee_id")}
    t0 = time.time()
    tmp = home.with_name(home.name + "_copy")
    for i in range(args.licensees - len(have)):
        lic = f"lic{i:03d}"
        if lic in have:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        tm(home, "protect", args.data, "-l", lic, "-o", tmp, "--strategy", args.strategy)
        shutil.rmtree(tmp, ignore_errors=True)
    with sqlite3.connect(home / "registry.sqlite") as conn:
        n_copies = conn.execute("SELECT count(*) FROM copies WHERE status = 'issued'").fetchone()[0]
    row = {"home": str(args.home), "data": args.data.name, "strategy": args.strategy, "copies": n_copies,
           "abuser_licensee": "initech", "issue_s": round(time.time() - t0, 1)}
    for what, lora in (("abuser", args.lora), ("innocent", args.innocent)):
        if lora is None:
            continue
        t1 = time.time()
        v = json.loads(tm(home, "audit", BASE, "--lora", lora, "--json", "-").stdout)
        top = sorted(v["licensees"], key=lambda c: -c["z"])[:3]
        row[what] = {"named": v["named"], "p_value": v["p_value"],
                     "top": [[c["licensee"], round(c["z"], 2), c["p_holm"]] for c in top],
                     "seconds": round(time.time() - t1, 1)}
    with args.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
