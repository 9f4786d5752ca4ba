"""Benchmark: tracing and black-box scoring against 10,000 issued copies of a 100,000-sample dataset.

Run:  .venv/bin/python bench/bench_scale.py [--samples 100000] [--copies 10000] [--images 64]

Builds a registry through the product's own write path (``Registry.init``, ``ensure_dataset``,
``add_copy``: keys derived from the master secret, marked samples into the sample table as packed
id sets). Each copy marks a random 2% of the samples: choosing them with ``select_marked``'s keyed
ranking would cost 10^9 HMACs here and does not change what the registry stores. 64 "leaked"
images (generated, named after copy 0's marked samples, carrying copy 0's `spread` mark) are then
traced with ``trace_files`` (what `tracemark trace-files` runs) and audited with ``audit_images``
(what `tracemark audit --images` runs). Prints seconds, the registry's size on disk and the
process's peak memory; the verdicts must name copy 0's licensee and nobody else.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step(what: str, home: Path, leaked: Path):
    """One product call in a fresh process: (seconds, (scoring seconds, named), peak RSS in MiB)."""
    from tracemark.audit.blackbox import audit_images
    from tracemark.registry.database import Registry
    from tracemark.detection.tracing import trace_files

    t0 = time.perf_counter()
    reg = Registry(home)
    out = None
    if what == "copies":
        reg.copies()
    elif what == "trace":
        v = trace_files(leaked, reg)
        out = (v.timings["scoring_s"], v.named)
    else:
        v = audit_images(leaked, reg).verdict
        out = (v.timings["scoring_s"], v.named)
    return time.perf_counter() - t0, out, rss_mib()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--copies", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.02)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None, help="build the registry here and keep it")
    args = ap.parse_args()

    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import pink_noise
    from tracemark.marking.schemes import get_scheme

    work = Path(tempfile.mkdtemp(prefix="tm-scale-"))
    home = args.keep or work / "home"
    rng = np.random.default_rng(0)
    names = [f"img/{i // 1000:03d}/{i:07d}.png" for i in range(args.samples)]
    dh = rng.integers(0, 2**63, size=args.samples, dtype=np.int64).astype(np.uint64) * 2 + 1
    caps = [f"a photo of item {i}" for i in range(args.samples)]
    sch = get_scheme("spread")
    params = {**sch.params(), "trigger_attempt": 0, "trigger_scope": "dataset"}
    k = max(1, round(args.rate * args.samples))
    t0 = time.perf_counter()
    reused = (home / "registry.sqlite").exists()
    reg = Registry(home) if reused else Registry.init(home)
    if reused:  # --keep of an earlier run: score again without rebuilding
        args.copies = 0
    with reg.write() as c:
        ds = reg.ensure_dataset(c, "big", "0" * 64, args.samples, str(work / "absent"))
    marked0 = None
    for start in range(0, args.copies, 500):
        with reg.write() as c:
            for j in range(start, min(args.copies, start + 500)):
                lic = f"licensee-{j:05d}"
                sel = np.sort(rng.choice(args.samples, k, replace=False))
                marked = [{"file_name": names[i], "dhash": int(dh[i]), "text": caps[i]} for i in sel]
                marked0 = marked if j == 0 else marked0
                reg.add_copy(c, dataset_id=ds, licensee_id=reg.ensure_licensee(c, lic),
                             key_id=reg.key_for("big", lic).key_id, scheme="spread", strategy="trigger",
                             rate=args.rate, params=params, marked=marked, out_path=None)
    t_build = time.perf_counter() - t0
    marked0 = marked0 or reg.copies()[0].marked
    reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in home.glob("registry.sqlite*")) / 2**20

    # leaked files: copy 0's marked samples, carrying its mark
    leaked = work / "leaked"
    key0 = reg.key_for("big", "licensee-00000")
    for m in marked0[:args.images]:
        img = np.clip(pink_noise(64, 64, rng) * 40 + 128, 0, 255).astype(np.float32)
        out = leaked / m["file_name"]
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(sch.embed(img, key0)), 0, 255).astype(np.uint8)).save(out)

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:  # a fresh process per step:
        t_load, _, _ = pool.submit(_step, "copies", home, leaked).result()  # its peak RSS is that step's
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        t_trace, (scoring_t, named_t), rss_t = pool.submit(_step, "trace", home, leaked).result()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        t_audit, (scoring_a, named_a), rss_a = pool.submit(_step, "audit", home, leaked).result()
    n_copies = reg.conn.execute("SELECT COUNT(*) FROM copies").fetchone()[0]
    print(f"{n_copies:,} copies x {args.samples:,} samples ({k:,} marked per copy), {args.images} images")
    print(f"  registry: {'reused' if reused else f'built in {t_build:.0f} s'}, {size:.1f} MiB on disk; Registry.copies() {t_load:.2f} s")
    print(f"  trace-files (trace_files, registry load included): {t_trace:.2f} s, scoring {scoring_t:.2f} s; "
          f"peak RSS {rss_t:.0f} MiB; named {named_t}")
    print(f"  audit --images (audit_images, registry load included): {t_audit:.2f} s, scoring {scoring_a:.2f} s; "
          f"peak RSS {rss_a:.0f} MiB; named {named_a}")
    print(f"rerun: .venv/bin/python bench/bench_scale.py --samples {args.samples} --copies {n_copies}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
