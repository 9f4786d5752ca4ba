"""Benchmark: the ``visual`` selection's time and peak memory, from decoded images to 10^6 samples.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_selection.py [--images 400] [--sizes 100000 1000000]
      [--rate 0.02] [--v1-max 100000]

1. Thumbnails of real decoded images (``make_sample_dataset``: 256 px, PNG and JPEG mixed), in
   memory and through the on-disk cache that datasets beyond ``THUMBS_IN_MEMORY`` use: ms per image.
2. The selection from precomputed thumbnails (synthetic uint8 8x8x3 thumbnails: 1,000 look-alike
   groups plus noise, in a memory-mapped file as the cache holds them) for each ``--sizes``: the
   streaming clustering (selection version 2) cold (clusters computed) and warm (a second licensee
   of the same dataset: clusters cached), and the dense version 1 up to ``--v1-max`` samples.
   Peak memory: ``tracemalloc`` (numpy's buffers included; the mapped input is not) and the
   process's max RSS. Also checks that the marked count is exact and a rerun selects the same ids.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_thumbnails(path: Path, n: int, groups: int = 1000, seed: int = 0) -> np.ndarray:
    """``n`` uint8 thumbnails in ``groups`` look-alike groups, written in chunks to a .npy memmap."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(groups, 192))
    mm = np.lib.format.open_memmap(path, "w+", np.uint8, (n, 192))
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        g = rng.integers(0, groups, m)
        mm[start:start + m] = np.clip(centres[g] + rng.normal(0, 20, (m, 192)), 0, 255).astype(np.uint8)
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, secs, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rate", type=float, default=0.02)
    ap.add_argument("--v1-max", type=int, default=100_000)
    args = ap.parse_args()

    from tracemark.marking import selection as strategies
    from tracemark.registry.keys import derive_key
    from tracemark.evaluation.samples import make_sample_dataset

    master = bytes(range(32))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_sample_dataset(tmp / "data", n=args.images, size=256, seed=0, fmt="mixed")
        paths = sorted(p for p in data.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        _, secs, peak = measure(lambda: strategies.image_thumbnails(paths))
        print(f"thumbnails, in memory: {len(paths)} images of 256 px: {secs:.2f} s = "
              f"{1000 * secs / len(paths):.2f} ms/image, tracemalloc peak {peak:.1f} MiB")
        strategies._THUMBS.clear()
        limit, strategies.THUMBS_IN_MEMORY = strategies.THUMBS_IN_MEMORY, 0  # force the on-disk path
        try:
            t, secs, peak = measure(lambda: strategies.image_thumbnails(paths, cache_dir=tmp / "cache"))
            strategies._THUMBS.clear()
            t2, secs2, _ = measure(lambda: strategies.image_thumbnails(paths, cache_dir=tmp / "cache"))
        finally:
            strategies.THUMBS_IN_MEMORY = limit
        assert isinstance(t, np.memmap) and np.array_equal(t, t2)
        print(f"thumbnails, cache file: {1000 * secs / len(paths):.2f} ms/image written, {1000 * secs2:.0f} ms "
              f"to reopen (cached file), tracemalloc peak {peak:.1f} MiB; 192 bytes/image on disk "
              f"(10^6 images: {192e6 / 2**20:.0f} MiB, ~{secs / len(paths) * 1e6 / 60:.0f} min to compute once)")

        for n in args.sizes:
            thumbs = synthetic_thumbnails(tmp / f"thumbs{n}.npy", n)
            ids = [f"{i:07d}.jpg" for i in range(n)]
            want = max(1, int(round(args.rate * n)))
            for version in (2, 1):
                if version == 1 and n > args.v1_max:
                    continue
                key = derive_key(master, "bench", "lic0")
                sel, secs, peak = measure(lambda: strategies.select_visual(key, ids, thumbs, args.rate,
                                                                           selection_version=version))
                _, warm, _ = measure(lambda: strategies.select_visual(derive_key(master, "bench", "lic1"), ids,
                                                                      thumbs, args.rate, selection_version=version))
                again = strategies.select_visual(key, ids, thumbs, args.rate, selection_version=version)
                assert len(sel) == want and again == sel, (len(sel), want)
                print(f"selection v{version}: n={n:,} rate={args.rate} k={round(strategies.VISUAL_SPLIT / args.rate)}"
                      f" marked={len(sel):,}: {secs:.1f} s cold, {warm:.2f} s warm (2nd licensee), "
                      f"tracemalloc peak {peak:.0f} MiB, max RSS so far {rss_mib():.0f} MiB")
                strategies._LABELS_V2.clear()
                strategies._visual_labels.cache_clear()
            del thumbs
    print("rerun: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_selection.py "
          f"--images {args.images} --sizes {' '.join(map(str, args.sizes))} --rate {args.rate} --v1-max {args.v1_max}")


if __name__ == "__main__":
    main()
