"""Refresh the tables of docs/research/results.md from results/old_base/*.csv (written by
`python -m research.eval analyze` on the old base; see the note at the top of that doc).

    python -m research.results_tables [--doc docs/research/results.md] [--results results/old_base]

Each table in the doc sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``; this script
rewrites what is between the markers and nothing else, so the prose around a table is kept and
must be re-read by hand when the numbers change.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def rows(results: Path, name: str) -> list[dict]:
    if not (results / f"{name}.csv").exists():
        return []
    with open(results / f"{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def md(rs: list[dict], cols: list[str]) -> str | None:
    if not rs:
        return None
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rs]
    return "\n".join(out)


def _short_p(rs: list[dict], col: str) -> list[dict]:
    for r in rs:
        try:
            r[col] = f"{float(r[col]):.2g}"
        except (KeyError, ValueError):
            pass
    return rs


def is_main(r: dict) -> bool:
    """Effectiveness rows that are a scheme / rate / collusion setting, not an attack or transfer."""
    v = r["variant"]
    return v in ("default", "") or all(p.split("=")[0] in ("mix", "strength") or p == "steps=2000" for p in v.split(","))


def robustness(rs: list[dict]) -> str | None:
    """One row per attack, the mean z and TPR of every scheme setting side by side."""
    table: dict[tuple, dict] = {}
    for r in rs:
        label = r.get("scheme", "visible")
        row = table.setdefault((r["attack"], r["param"]), {"attack": r["attack"], "param": r["param"]})
        row[f"z {label} ({r['models']} models)"] = r["mean_z"]
        row[f"TPR {label}"] = r["tpr_at_1e-3"]
    cols = ["attack", "param"] + list(dict.fromkeys(k for row in table.values() for k in row if k not in ("attack", "param")))
    return md(list(table.values()), cols)


def tables(results: Path) -> dict[str, str]:
    eff = _short_p(rows(results, "effectiveness"), "min_p")
    main_cols = ["scheme", "strategy", "method", "rate", "variant", "models", "psnr", "mean_z", "min_p", "tpr_at_1e-3",
                 "tpr_holm100_at_1e-3", "auroc", "traced", "false_accusations"]
    var_cols = ["scheme", "method", "rate", "variant", "models", "mean_z", "min_p", "tpr_at_1e-3", "traced",
                "false_accusations", "probe_acc_normal"]
    base = [r for r in rows(results, "baseline") if r["detector_for"].startswith("warp-s4")]
    ts = [r for r in rows(results, "tracing_scale") if r["scheme"].startswith("visible") and r["strategy"] == "trigger"
          and (is_main(r) or r["variant"].startswith("base="))]
    return {
        "effectiveness": md([r for r in eff if is_main(r)], main_cols),
        "variants": md([r for r in eff if not is_main(r)], var_cols),
        "power": md([r for r in rows(results, "power") if r["scheme"].startswith("visible")],
                    ["scheme", "strategy", "method", "rate", "n_images", "models", "trials", "tpr_at_1e-3",
                     "tpr_at_0.01"]),
        "harm": md(rows(results, "harm"), ["model", "protected", "probe_acc_normal", "kid_x1000_vs_real",
                                           "z_leak_without_trigger"]),
        "robustness": robustness(rows(results, "robustness_generated")),
        "baseline": md(base, ["model", "trained_on_coated", "detector_heldout_acc", "baseline_fraction_coated",
                              "baseline_flagged", "tracemark_named", "tracemark_p"]),
        "tracing_scale": md(ts, ["scheme", "method", "rate", "colluders", "variant", "licensees", "models",
                                 "guilty_named_rate", "false_accusations", "top1_is_guilty"]),
        "null_check": md(rows(results, "null_check")[-1:], ["model", "innocent_keys", "p_below_1e-3", "p_below_0.01",
                                                              "p_below_0.05"]),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", type=Path, default=Path("docs/research/results.md"))
    ap.add_argument("--results", type=Path, default=Path("results/old_base"))
    args = ap.parse_args(argv)
    text = args.doc.read_text()
    found = set()
    for name, table in tables(args.results).items():
        if table is None:
            continue
        pat = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table -->)", re.S)
        if pat.search(text):
            found.add(name)
            text = pat.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    args.doc.write_text(text)
    print(f"{args.doc}: refreshed {', '.join(sorted(found)) or 'no tables (no markers found)'}")


if __name__ == "__main__":
    main()
