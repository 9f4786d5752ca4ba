"""End-to-end cost model: issuing, re-deriving, tracing and auditing 10^6 images x 10^4 licensees.

Run:  .venv/bin/python bench/cost_model.py [--sizes 250 1000] [--images 1000000] [--licensees 10000]

Everything is measured here, in one run, on the product's own calls (what `tracemark protect`,
`tracemark materialize` and `tracemark trace-files` run) over JPEG files of 512 x 512, and then
multiplied out; nothing is assumed but the counts and the machine's core count:

* the dataset's one-time pass and a further copy at 2% (``min_marked=0``) are timed at two dataset
  sizes, so each cost splits into a fixed part per copy and a part per image (a straight line
  through the two points: T(n) = fixed + n x per_image);
* a copy's files: ``link="copy"`` (default) and ``link="hard"`` (the opt-in: unmarked files are
  links to the originals) are both timed;
* the white-box audit's cost per probe and model pass is read from ``bench/bench_audit.py``'s
  JSON when it is there (``--audit-json``, the CPU test world's model); tracing is timed here
  against the registry built by this run.

Prints the measured rates, the model's arithmetic and its totals for one machine (the cores this
run had) and for a Ray cluster of ``--ray-cores`` cores (the per-file work of a copy runs on the
engine; the parent's per-image work does not, so copies of different licensees must run side by
side to use a cluster: the model says so). The machine's load average is printed: on a shared
machine every figure is slower than on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_protect import decode_encode  # noqa: E402  (the baseline make bench uses)


def _timed(fn, *args, **kwargs) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t


def _line(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """(fixed seconds, seconds per image) of the line through (n1, t1) and (n2, t2)."""
    per = max((t2 - t1) / (n2 - n1), 0.0)
    return max(t1 - per * n1, 0.0), per


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def measure(sizes: list[int], workers: int, tmp: Path) -> dict:
    from tracemark.detection.tracing import trace_files
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark.marking.materialize import materialize
    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry

    out: dict = {"sizes": sizes, "workers": workers, "rows": []}
    for n in sizes:
        data = make_sample_dataset(tmp / f"data_{n}", n=n, size=512, seed=n, fmt="jpeg")
        reg = Registry.init(tmp / f"home_{n}")
        row = {"n": n, "bytes": sum(p.stat().st_size for p in data.iterdir())}
        row["copytree_s"] = _timed(shutil.copytree, data, tmp / f"plain_{n}")
        files = sorted(str(p) for p in data.iterdir() if p.suffix != ".jsonl")
        (tmp / f"de_{n}").mkdir()
        with ProcessPoolExecutor(workers) as pool:  # as make bench times it: the pool starts in the timing
            t = time.perf_counter()
            list(pool.map(decode_encode, files, [str(tmp / f"de_{n}" / Path(f).name) for f in files], chunksize=8))
            row["decode_encode_s"] = time.perf_counter() - t
        row["first_s"] = _timed(protect, data, tmp / f"c0_{n}", "first", registry=reg, rate=0.02, min_marked=0,
                                workers=workers)
        row["further_s"] = min(_timed(protect, data, tmp / f"c{i}_{n}", f"lic{i}", registry=reg, rate=0.02,
                                      min_marked=0, workers=workers) for i in (1, 2))
        row["further_hard_s"] = _timed(protect, data, tmp / f"h_{n}", "linked", registry=reg, rate=0.02,
                                       min_marked=0, workers=workers, link="hard")
        row["materialize_s"] = _timed(materialize, reg, "lic1", tmp / f"m_{n}", workers=workers)
        row["n_marked"] = len(reg.copies()[1].marked)
        # tracing: 16 leaked marked files of one copy against every copy of this registry
        leak = tmp / f"leak_{n}"
        leak.mkdir()
        for m in reg.copies()[1].marked[:16]:
            shutil.copy(tmp / f"c1_{n}" / m["file_name"], leak / m["file_name"])
        t = time.perf_counter()
        v = trace_files(leak, reg)
        row["trace_s"], row["trace_named"] = time.perf_counter() - t, v.named
        row["trace_files"], row["copies"] = len(list(leak.iterdir())), len(reg.copies())
        reg.close()
        for p in tmp.glob(f"*_{n}"):
            if p.name != f"data_{n}":
                shutil.rmtree(p, ignore_errors=True)
        out["rows"].append(row)
    return out


def ambient_probes(images: int, licensees: int, rate: float, cap: int, seed: int = 0) -> int:
    """Distinct samples that capped ambient audits of ``licensees`` copies read: each copy marks a
    random ``rate`` of the samples and reads its first ``cap`` in the dataset's shared probe order,
    i.e. the samples it marked up to the rank of its cap-th one (a negative binomial draw). A rank is
    read when some copy whose cut-off lies beyond it marked it. Expected count, one draw of the
    cut-offs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if cap >= images * rate:
        cut = np.full(licensees, images)
    else:
        cut = np.minimum(cap + rng.negative_binomial(cap, rate, size=licensees), images)
    ranks = np.arange(int(cut.max()))
    covering = licensees - np.searchsorted(np.sort(cut), ranks, side="right")  # copies with cut-off > rank
    return int(round(float((1.0 - (1.0 - rate) ** covering).sum())))


def model(m: dict, images: int, licensees: int, ray_cores: int, audit: dict | None) -> list[str]:
    r1, r2 = m["rows"][0], m["rows"][-1]
    n1, n2 = r1["n"], r2["n"]
    lines = []
    parts = {}
    for key in ("first_s", "further_s", "further_hard_s", "materialize_s", "copytree_s", "decode_encode_s"):
        parts[key] = _line(n1, r1[key], n2, r2[key])
    pass_per = max(parts["first_s"][1] - parts["further_s"][1], 0.0)  # the pass: the first copy's extra per image
    bytes_per = r2["bytes"] / n2
    w = m["workers"]
    lines.append(f"measured on {w} worker processes, JPEG 512 x 512 ({bytes_per / 1024:.0f} KiB per file), "
                 f"dataset sizes {n1} and {n2}; T(n) = fixed + n x per image:")
    names = {"first_s": "first copy at 2% (the one-time pass included)", "further_s": "a further copy at 2%",
             "further_hard_s": "a further copy at 2%, unmarked files hard-linked",
             "materialize_s": "re-deriving a copy (materialize)", "copytree_s": "shutil.copytree of the dataset",
             "decode_encode_s": "decoding and re-encoding the dataset (make bench's dec+enc)"}
    for key, label in names.items():
        fixed, per = parts[key]
        lines.append(f"  {label:50s} {fixed:6.3f} s + n x {per * 1e3:7.4f} ms   ({r1[key]:.2f} s at {n1}, "
                     f"{r2[key]:.2f} s at {n2})")
    lines.append(f"  the one-time pass alone: {pass_per * 1e3:.3f} ms per image; a copy marks "
                 f"{r2['n_marked']} of {n2} (2%)")
    de_fixed, de_per = parts["decode_encode_s"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}" if b > 0 else "n/a (sizes too close to fit)"

    lines.append(f"  per image, a further copy at 2% is {ratio(de_per, parts['further_s'][1])}x faster than decoding "
                 f"and re-encoding it (hard-linked {ratio(de_per, parts['further_hard_s'][1])}x); materialize runs at "
                 f"{ratio(parts['copytree_s'][1], parts['materialize_s'][1])}x copytree's speed")
    lines.append(f"  trace-files: {r2['trace_files']} leaked files against {r2['copies']} copies: {r2['trace_s']:.2f} s "
                 f"(named {r2['trace_named']})")
    lines.append("")
    lines.append(f"model for {images:,} images x {licensees:,} licensees "
                 f"({images * bytes_per / 2**30:,.0f} GiB per copy at this file size):")
    pass_t = pass_per * images
    fixed, per = parts["further_s"]
    copy_t = fixed + per * images
    hfixed, hper = parts["further_hard_s"]
    hard_t = hfixed + hper * images
    mfixed, mper = parts["materialize_s"]
    mat_t = mfixed + mper * images
    lines.append(f"  one-time pass: {pass_per * 1e3:.3f} ms x {images:,} = {_hms(pass_t)} on {w} workers")
    de_t = de_fixed + de_per * images
    lines.append(f"  one copy: {fixed:.2f} s + {per * 1e3:.4f} ms x {images:,} = {_hms(copy_t)} "
                 f"({de_t / copy_t:.1f}x faster than decoding and re-encoding the dataset, {_hms(de_t)}); "
                 f"hard-linked: {_hms(hard_t)} ({de_t / hard_t:.1f}x); re-derived: {_hms(mat_t)}")
    lines.append(f"  all {licensees:,} copies, one after another on this machine: copies {_hms(copy_t * licensees)}, "
                 f"hard-linked {_hms(hard_t * licensees)}; storage {licensees * images * bytes_per / 2**40:,.1f} TiB "
                 f"copied, {licensees * images * 0.02 * bytes_per / 2**40:,.2f} TiB hard-linked (marked files only)")
    scale = ray_cores / w
    lines.append(f"  {ray_cores} cores ({scale:.0f}x this machine's workers): a copy's per-image work runs where its "
                 f"`protect` runs (its marks on the engine), so copies scale by running {ray_cores // w} protects side "
                 f"by side against one registry (its writes are serialised, a few ms per copy): copies "
                 f"{_hms(copy_t * licensees / scale)}, hard-linked {_hms(hard_t * licensees / scale)} (the one-time "
                 f"pass, once per dataset, decodes on the engine but hashes and thumbnails where protect runs)")
    if audit:
        c = audit["c_s"]
        cap = 256  # tracemark.audit.whitebox.DEFAULT_MAX_PROBES_PER_COPY (not imported: it loads torch)
        per_copy = min(cap, int(images * 0.02))
        ambient = ambient_probes(images, licensees, 0.02, per_copy)
        lines.append(f"  white-box audit ({c * 1e3:.0f} ms per probe per model pass, from {audit['where']}), "
                     f"the suspect and 2 shadows = 3 passes, {per_copy} marked samples read per copy (the cap):")
        lines.append(f"    ambient copies share probes, and the cap keeps the first samples of one keyed order per "
                     f"dataset, so {licensees:,} copies read {ambient:,} distinct samples (simulated): "
                     f"{_hms(ambient * 3 * c)}; trigger copies read their own: {licensees:,} x {per_copy} x 3 x c = "
                     f"{_hms(licensees * per_copy * 3 * c)} (this CPU's tiny model; docs/audit.md forecasts SD 1.5 "
                     f"on a GPU)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs=2, default=[250, 1000])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--licensees", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--ray-cores", type=int, default=256)
    ap.add_argument("--audit-json", type=Path, default=Path("results/bench_audit_licensees.json"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None,
                    help="recompute the model from an earlier run's --json (no measuring)")
    args = ap.parse_args()
    if args.from_json:
        m = json.loads(args.from_json.read_text())
        load = tuple(m["load_before"])
    else:
        load = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmpd:
            m = measure(sorted(args.sizes), args.workers, Path(tmpd))
        m["load_before"], m["load_after"] = load, os.getloadavg()
    audit = None
    if args.audit_json.is_file():
        try:
            d = json.loads(args.audit_json.read_text())
            c = d["s_per_probe_per_pass"]
            audit = {"c_s": float(max(c.values()) if isinstance(c, dict) else c),
                     "where": f"{args.audit_json}, the CPU test world's 32 px model, load {d.get('loadavg_before')}"}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            audit = None
    lines = model(m, args.images, args.licensees, args.ray_cores, audit)
    print(f"cost model (load average {load[0]:.2f} before, {m['load_after'][0]:.2f} after; "
          f"{os.cpu_count()} cores)")
    print("\n".join(lines))
    print(f"rerun: .venv/bin/python bench/cost_model.py --sizes {' '.join(map(str, m['sizes']))} "
          f"--images {args.images} --licensees {args.licensees} --ray-cores {args.ray_cores}")
    if args.json:
        args.json.write_text(json.dumps({**{k: v for k, v in m.items() if k != "model"}, "model": lines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
