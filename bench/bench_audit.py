"""Benchmark: the white-box audit's cost against copies x marked samples x shadows (issue #31).

Run:  .venv/bin/python bench/bench_audit.py [--copies 3 10] [--shadows 1 2] [--marked 50]

CPU world: the test world's base model (testworld/tracemark_sim/base_model) is the suspect and each
"shadow" is another load of it (a shadow has the base's architecture, so it costs what a real one costs); the
copies are issued with the product's ``protect`` (trigger strategy, ``--marked`` samples each) and
the audit is the product's ``audit_whitebox`` with the loss statistic and its default timesteps and
draws. Every trigger copy's samples are read with its own prompt, so the probes are
copies x marked; the suspect is one pass over all probes and each shadow one more
(:func:`tracemark.diffusion.denoiser.latent_loss_gradients`). Prints seconds per probe per model pass and the
forecast T = load + probes x (1 + shadows) x that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--shadows", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--marked", type=int, default=50)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=None, help="pipeline folder (default: the CPU test world's base)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark_sim.pipeline import default_base_path

    base = args.base or default_base_path()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        n = 10 * args.marked  # rate 0.1: exactly ``marked`` samples per copy
        data = make_sample_dataset(tmp / "data", n=n, size=args.size, seed=0, fmt="png")
        t = time.perf_counter()
        suspect = load_pipeline(base, device=args.device)
        load_s = time.perf_counter() - t
        refs = [load_pipeline(base, device=args.device) for _ in range(max(args.shadows))]
        for n_copies in args.copies:
            reg = Registry.init(tmp / f"home_{n_copies}")
            for i in range(n_copies):
                protect(data, tmp / f"c{n_copies}_{i}", f"lic{i:04d}", registry=reg, rate=0.1, min_marked=0,
                        selection="random", workers=2)
            for k in args.shadows:
                res = audit_whitebox(base, reg, data, pipe=suspect, ref_pipe=refs[:k], device=args.device,
                                     statistic="loss")
                probes = int(res.params["n_probes"])
                sec = float(res.timings["residuals_s"])
                rows.append({"copies": n_copies, "marked": args.marked, "shadows": k, "probes": probes,
                             "residuals_s": sec, "total_s": float(res.timings["total_s"]),
                             "s_per_probe_per_pass": sec / (probes * (1 + k))})
                print(f"copies {n_copies:4d}  shadows {k}  probes {probes:5d}  audit {sec:7.1f} s  "
                      f"{sec / (probes * (1 + k)) * 1000:6.1f} ms / probe / model pass", flush=True)
            reg.close()
    c = float(np.median([r["s_per_probe_per_pass"] for r in rows]))
    print(f"\nwhite-box audit, {base.name} on {args.device} ({args.size} px images, {threads} torch threads, loss statistic, "
          f"default timesteps and draws); model load {load_s:.1f} s")
    print(f"{'copies':>6} {'marked':>6} {'shadows':>7} {'probes':>6} {'seconds':>8} {'ms/probe/pass':>13}")
    for r in rows:
        print(f"{r['copies']:6d} {r['marked']:6d} {r['shadows']:7d} {r['probes']:6d} {r['residuals_s']:8.1f} "
              f"{r['s_per_probe_per_pass'] * 1000:13.1f}")
    print(f"forecast: T = load + copies x marked x (1 + shadows) x {c * 1000:.1f} ms (median of the grid); "
          + ", ".join(f"{lic:,} licensees x {args.marked} marked x 2 shadows: {lic * args.marked * 3 * c / 60:.1f} min"
                      for lic in (10, 100, 1000)))
    print("rerun: .venv/bin/python bench/bench_audit.py --copies " + " ".join(map(str, args.copies))
          + " --shadows " + " ".join(map(str, args.shadows)) + f" --marked {args.marked}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "s_per_probe_per_pass": c, "load_s": load_s}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
