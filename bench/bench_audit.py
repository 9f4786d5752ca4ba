"""Benchmark: the white-box audit's cost against copies x marked samples x shadows (issue #31).

Run:  .venv/bin/python bench/bench_audit.py [--copies 3 10] [--shadows 1 2] [--marked 50]
      .venv/bin/python bench/bench_audit.py --licensees 10 100 1000 --trigger-licensees 10 --json FILE

``--licensees``: one dataset (``--samples`` generated images of ``--size`` px) issued to N licensees
with ``protect`` at the product's defaults (ambient strategy: rate 2%, at least 50 marked, visual
selection; unmarked files hard-linked and each copy deleted once issued: the audit reads the owner's
original data and the registry keeps the rest), the same registry growing to each N in turn; then
the product's ``audit_whitebox`` end to end (the suspect and ``--default-shadows`` shadows loaded from
their folders, every copy scored, default probe cap, timesteps and draws). Ambient copies prompt
with each sample's own caption, so their probes stop at the dataset's samples whatever N; trigger
copies (``--trigger-licensees``, measured) each read their own marked samples behind their own word,
so their probes are N x marked: 100 and 1,000 are forecast from the measured c.

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
    ap.add_argument("--licensees", type=int, nargs="+", default=None,
                    help="licensees mode: ambient copies of one dataset at the defaults, audited at each N")
    ap.add_argument("--trigger-licensees", type=int, nargs="*", default=[10],
                    help="licensees mode: trigger registries measured (the rest forecast)")
    ap.add_argument("--samples", type=int, default=300, help="licensees mode: images in the dataset")
    ap.add_argument("--default-shadows", type=int, default=2, help="licensees mode: shadows (tracemark shadow's "
                    "default count)")
    args = ap.parse_args()
    if args.licensees:
        return licensees(args)

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


def _issue(data: Path, reg, lics: list[str], strategy: str, tmp: Path) -> float:
    """Issue each licensee a copy at the product's defaults; the copy's folder is removed after
    issue (hard links for the unmarked files, so only the marked ones are written). Seconds."""
    import shutil

    from tracemark.marking.protect import protect

    t = time.perf_counter()
    for lic in lics:
        out = tmp / "copy"
        protect(data, out, lic, registry=reg, strategy=strategy, workers=1, link="hard")
        shutil.rmtree(out)
    return time.perf_counter() - t


def licensees(args) -> None:
    import os

    import torch

    from tracemark.audit.whitebox import DEFAULT_MAX_PROBES_PER_COPY, audit_whitebox
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark.registry.database import Registry
    from tracemark_sim.pipeline import default_base_path

    base = args.base or default_base_path()
    k = args.default_shadows
    rows = []
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        data = make_sample_dataset(tmp / "data", n=args.samples, size=args.size, seed=0, fmt="png")
        for strategy, counts in (("ambient", sorted(args.licensees)), ("trigger", sorted(args.trigger_licensees))):
            if not counts:
                continue
            reg = Registry.init(tmp / f"home_{strategy}")
            have = 0
            for n in counts:
                issue_s = _issue(data, reg, [f"lic{i:05d}" for i in range(have, n)], strategy, tmp)
                issued, have = n - have, n
                res = audit_whitebox(base, reg, data, reference=[base] * k, device=args.device, statistic="loss")
                p, t = res.params, res.timings
                reads = [r for r, _ in p["marked_read"].values()]
                probes, sec = int(p["n_probes"]), float(t["residuals_s"])
                row = {"strategy": strategy, "licensees": n, "samples": args.samples, "shadows": k,
                       "marked_per_copy": int(np.median([m for _, m in p["marked_read"].values()])),
                       "read_per_copy": int(np.median(reads)), "max_probes_per_copy": p["max_probes_per_copy"],
                       "reads": int(sum(reads)), "probes": probes, "passes_s": sec, "load_s": float(t["load_s"]),
                       "total_s": float(t["total_s"]), "scoring_s": round(float(t["total_s"]) - float(t["load_s"]) - sec, 2),
                       "s_per_probe_per_pass": sec / (probes * (1 + k)), "issued": issued,
                       "issue_s_per_copy": round(issue_s / max(issued, 1), 3),
                       "named": res.verdict.named}
                rows.append(row)
                print(f"{strategy:7s} {n:5d} licensees  probes {probes:6d} (reads {row['reads']:6d})  audit "
                      f"{row['total_s']:7.1f} s (passes {sec:6.1f}, scoring {row['scoring_s']:5.1f})  "
                      f"{row['s_per_probe_per_pass'] * 1000:6.1f} ms / probe / pass  issue {row['issue_s_per_copy']:.2f} s/copy",
                      flush=True)
            reg.close()
    load.append(os.getloadavg())
    c = {s: float(np.median([r["s_per_probe_per_pass"] for r in rows if r["strategy"] == s]))
         for s in ("ambient", "trigger") if any(r["strategy"] == s for r in rows)}
    print(f"\nwhite-box audit, {base.name} on {args.device} ({args.samples} images of {args.size} px, "
          f"{torch.get_num_threads()} torch threads, loss statistic, {k} shadows, default timesteps, draws and probe "
          f"cap {DEFAULT_MAX_PROBES_PER_COPY}); load average before {load[0][0]:.2f}, after {load[1][0]:.2f}")
    print(f"{'strategy':>8} {'licensees':>9} {'marked':>6} {'probes':>6} {'seconds':>8} {'ms/probe/pass':>13}")
    for r in rows:
        print(f"{r['strategy']:>8} {r['licensees']:9d} {r['marked_per_copy']:6d} {r['probes']:6d} {r['total_s']:8.1f} "
              f"{r['s_per_probe_per_pass'] * 1000:13.1f}")
    forecast = []
    if "trigger" in c:
        marked = next(r["marked_per_copy"] for r in rows if r["strategy"] == "trigger")
        for n in sorted(set(args.licensees) | set(args.trigger_licensees)):
            probes = n * marked
            sec = probes * (1 + k) * c["trigger"]
            forecast.append({"strategy": "trigger", "licensees": n, "probes": probes, "passes_s": round(sec, 1)})
            print(f"trigger forecast: {n:,} licensees x {marked} marked x (1 + {k}) passes x "
                  f"{c['trigger'] * 1000:.1f} ms = {sec:,.0f} s ({sec / 3600:.2f} h)")
    cmd = ("OMP_NUM_THREADS=1 .venv/bin/python bench/bench_audit.py --licensees " + " ".join(map(str, args.licensees))
           + " --trigger-licensees " + " ".join(map(str, args.trigger_licensees))
           + f" --samples {args.samples} --size {args.size} --default-shadows {k}"
           + (f" --json {args.json}" if args.json else ""))
    print("rerun: " + cmd)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "s_per_probe_per_pass": c, "forecast": forecast,
                                         "loadavg_before": load[0], "loadavg_after": load[1],
                                         "torch_threads": torch.get_num_threads(), "command": cmd}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
