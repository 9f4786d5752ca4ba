"""Benchmark: score 64 images against 100,000 keys derived on the fly (issue: < 5 s on 2 cores).

Run:  .venv/bin/python bench/bench_score.py [--keys 100000] [--images 64] [--chunk 4096]

Keys are derived from a master secret exactly as licensee keys are (HMAC of dataset and
licensee ids), their key vectors generated chunk by chunk, so memory stays bounded by one chunk.
Prints the wall time split into features / key derivation + scoring, and the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from tracemark.detection import stats
from tracemark.registry.keys import derive_key
from tracemark.evaluation.samples import pink_noise
from tracemark.marking.schemes import get_scheme


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--scheme", default="spread")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [pink_noise(64, 64, rng).astype(np.float32) for _ in range(args.images)]
    sch = get_scheme(args.scheme)
    master = bytes(32)
    tracemalloc.start()
    t0 = time.perf_counter()
    F = sch.features(images)
    m = stats.aggregate(F, sch.kind)
    t1 = time.perf_counter()

    def chunks():
        for start in range(0, args.keys, args.chunk):
            keys = [derive_key(master, "bench", f"licensee-{i}") for i in range(start, min(args.keys, start + args.chunk))]
            yield sch.key_vectors(keys)

    z, n = stats.scan_keys(m, chunks(), sch.kind)
    t2 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{args.images} images x {n:,} keys ({args.scheme}, D = {F.shape[1]}): features {t1 - t0:.2f} s, "
          f"keys + scoring {t2 - t1:.2f} s, total {t2 - t0:.2f} s")
    print(f"peak traced memory {peak / 2**20:.1f} MiB (chunk {args.chunk}); process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"null check: mean z {z.mean():+.3f}, sd {z.std():.3f}, max {z.max():.2f} (expected max ~ {np.sqrt(2 * np.log(n)):.2f})")
    print("rerun: .venv/bin/python bench/bench_score.py --keys", args.keys, "--images", args.images)


if __name__ == "__main__":
    main()
