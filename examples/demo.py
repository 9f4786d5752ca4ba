"""End-to-end demo (``make demo``) of the product's default path; nothing is downloaded.

Part 1 (seconds): protect a generated photo-like dataset for 3 licensees with the default options,
leak 20 of one licensee's marked images as resized JPEGs, and name the licensee with trace-files;
the owner's clean originals name nobody.
Part 2 (minutes, the CPU world): an owner dataset of landscapes (not the faces the project tuned
on), 3 licensees with the default options, `tracemark shadow` (the owner's reference fine-tune on
the clean data), an abuser's LoRA fine-tuned on one licensee's copy with `tracemark finetune`,
then `tracemark audit BASE --lora ABUSER` (names the licensee) and `tracemark audit BASE` (the base,
never fine-tuned on the data: names nobody), with the HTML evidence report.

The master key is fixed (``DEMO_SEED``) so the verdict is reproducible run to run; over 8 other keys
the same path named the licensee 8 times (z 6.05-8.82; bench/bench_default_path.py). Both fine-tunes
run ``DEMO_STEPS`` LoRA steps (default 300) instead of the preset's 800, so the demo takes about
3.5 minutes on 2 cores once .venv exists; the shadow uses the same recipe as the abuser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(os.environ.get("DEMO_OUT", "demo_out"))
HOME = OUT / "home"


STEPS = os.environ.get("DEMO_STEPS", "300")
N_OWNER = os.environ.get("DEMO_N", "500")


NAMED = 3  # exit status of a verdict that names a licensee (0: nobody named, 1: error)


def tm(*args: str, check: bool = True) -> int:
    """Run tracemark; ``check``: fail on an error (a verdict's exit 3, "named", is not one)."""
    cmd = [sys.executable, "-m", "tracemark", *map(str, args)]
    print("$ tracemark " + " ".join(map(str, args)), flush=True)
    env = {**os.environ, "TRACEMARK_HOME": str(HOME), "COLUMNS": "140"}
    rc = subprocess.run(cmd, env=env).returncode
    if check and rc not in (0, NAMED):
        raise subprocess.CalledProcessError(rc, cmd)
    return rc


def fix_key(seed: str) -> None:
    """The demo's fixed master key (see the module docstring); a real owner keeps `init`'s random one."""
    import hashlib
    import sqlite3

    from tracemark.registry.database import key_check_value

    master = hashlib.sha256(f"tracemark-demo|{seed}".encode()).hexdigest()
    (HOME / "master.key").write_text(master + "\n")
    with sqlite3.connect(HOME / "registry.sqlite") as conn:
        conn.execute("UPDATE owner SET key_check = ? WHERE id = 1", (key_check_value(bytes.fromhex(master)),))


def part1() -> None:
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark.registry.database import Registry

    print("\n=== Part 1: protect and trace leaked files ===", flush=True)
    data = make_sample_dataset(OUT / "photos", n=200, size=256, seed=0, fmt="mixed")
    for lic in ("acme", "globex", "initech"):
        tm("protect", data, "--licensee", lic, "--out", OUT / f"photos_{lic}")
    tm("copies")
    # the leak: 20 of globex's marked images, resized by 0.9-1.1 and re-encoded as JPEG 75, renamed
    copy = next(c for c in Registry(HOME).copies() if c.licensee == "globex")
    leak = OUT / "leak"
    leak.mkdir()
    rng = np.random.default_rng(0)
    for i, m in enumerate(copy.marked[:20]):
        im = Image.open(OUT / "photos_globex" / m["file_name"]).convert("RGB")
        f = rng.uniform(0.9, 1.1)
        im.resize((round(im.width * f), round(im.height * f))).save(leak / f"found_{i:02d}.jpg", quality=75)
    tm("trace-files", leak, "--json", OUT / "trace_leak.json")
    tm("trace-files", OUT / "photos", check=False)  # the owner's clean originals: nobody is named (exit 0)


def part2() -> None:
    try:
        from tracemark_sim import default_base_path  # the CPU test world (testworld/, installed by make venv)
    except ImportError:
        print("(the CPU test world is not installed: pip install --no-deps -e testworld; skipping part 2)")
        return
    base = default_base_path()
    print("\n=== Part 2: the CPU world: shadow, an abuser's LoRA, the audit ===", flush=True)
    owner = OUT / "landscapes"
    tm("sim", "make-data", owner, "--n", N_OWNER, "--domain", "landscapes", "--seed", "11")
    tm("protect", owner, "--dry-run")
    for lic in ("acme", "globex", "initech"):
        tm("protect", owner, "--licensee", lic, "--out", OUT / f"landscapes_{lic}")
    tm("shadow", owner, "--base", base, "--count", "1", "--steps", STEPS)
    tm("finetune", OUT / "landscapes_initech", "--base", base, "--out", OUT / "abuser_lora", "--steps", STEPS,
       "--seed", "5")
    tm("audit", base, "--lora", OUT / "abuser_lora", "--dataset", "landscapes", "--json", OUT / "audit.json",
       "--report", OUT / "audit.html")
    # the base itself, never fine-tuned on the data: names nobody
    tm("audit", base, "--dataset", "landscapes", "--json", OUT / "audit_base.json")
    print(f"\nEvidence report: {(OUT / 'audit.html').resolve()}")


def main() -> None:
    t0 = time.time()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tm("init", "--owner", "demo-owner")
    fix_key(os.environ.get("DEMO_SEED", "0"))
    part1()
    if os.environ.get("DEMO_QUICK") != "1":
        part2()
    print(f"\ndemo finished in {time.time() - t0:.0f} s; outputs in {OUT}/")


if __name__ == "__main__":
    main()
