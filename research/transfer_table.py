"""Issue #32's robustness-and-transfer table, from the measured rows (nothing is typed in by hand).

    python -m research.transfer_table            # prints the markdown table docs/learnability.md opens with
    python -m research.transfer_table --write docs/learnability.md   # rewrites it between its markers

Sources (each row of the table names its command there):
  results/default_path_real.jsonl    untouched copies, the product's recipe (bench/bench_default_path.py)
  results/robustness_default.jsonl   countermeasures before training (research/robustness_default.py)
  results/whitebox_fit_official.jsonl, results/official_full.jsonl, results/lora_levels.jsonl
                                     other trainers and recipes (research/official_lora.sh,
                                     research/official_full.sh, research/lora_levels.sh)

A model counts as detected at alpha when the licensee's Holm-corrected p over the registry's copies
(3 licensees) is below alpha; "among 100" multiplies the licensee's p by 100 (Holm's bound for
a registry of 100 copies; bench/bench_among.py measured one such audit directly).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

ALPHA = 1e-3
#: copies in every registry the rows come from (acme, globex, initech): the licensee's Holm p is
#: N_COPIES x its raw p when it ranks first, so "among 100" is Holm p x 100 / N_COPIES
N_COPIES = 3
PRODUCT = "tracemark finetune (the product's recipe: LoRA rank 16, lr 2e-3, 800 steps)"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def cells(results: Path) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """(domain, trainer, countermeasure) -> [(licensee z, licensee p before Holm over copies)]."""
    out: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in _rows(results / "default_path_real.jsonl"):
        if r.get("steps") is None:
            a = r["abuser"]
            out[(r["domain"], PRODUCT, "none" if r["strategy"] == "trigger" else "none (ambient copies)")].append(
                (a["z"]["initech"], a["p_value"] if "initech" in a["named"] else 1.0))
    for r in _rows(results / "robustness_default.jsonl"):
        p = r.get("licensee_p_holm", r["p_value"] if "initech" in (r.get("named") or []) else 1.0)
        attack = "none" if r["attack"] == "none" else f"{r['attack']} {r['param']:g}"
        out[("photos", PRODUCT, attack)].append(
            (r["z"]["initech"], p))
    for r in _rows(results / "whitebox_fit_official.jsonl"):
        if r["suspect"] in OFFICIAL:
            out[("photos", OFFICIAL[r["suspect"]], "none")].append(
                (r["shadow"]["z"]["initech"], r["shadow"]["p"] if "initech" in r["shadow"]["named"] else 1.0))
    for r in _rows(results / "official_full.jsonl"):
        out[("photos", f"official train_text_to_image.py, full fine-tune (EMA, lr {r['lr']:.0e}, {r['steps']} steps of 1 x 4)".replace("e-0", "e-"),
             "none")].append((r["z"]["initech"], r["licensee_p_holm"]))
    for r in _rows(results / "lora_levels.jsonl"):
        if r["lora"] in LEVELS:
            out[("photos", LEVELS[r["lora"]], "none")].append(
                (r["z"]["initech"], r["p_value"] if "initech" in r["named"] else 1.0))
    return out


#: the other trainers' rows (research/official_lora.sh; the product's recipe restricted, research/lora_levels.sh)
OFFICIAL = {
    "official1e-4": "official train_text_to_image_lora.py, documented (rank 4 attention, lr 1e-4, 1000 steps)",
    "official1e-3": "official train_text_to_image_lora.py, lr 1e-3, 1000 steps",
    "official1e-3noflip": "official train_text_to_image_lora.py, lr 1e-3, no --random_flip",
    "official1e-4r64": "official train_text_to_image_lora.py, rank 64",
    "tm_attn": "tracemark finetune --lora-targets attn (attention projections only)",
}
LEVELS = {
    "fullres": "tracemark finetune, full-resolution level only",
    "lowres": "tracemark finetune, every level but the full-resolution one",
}


def table(results: Path) -> str:
    lines = ["| domain | trainer | countermeasure | models | licensee z | named at 0.01 (the audit's default) | TPR at 1e-3 | named among 100 at 1e-3 |",
             "|---|---|---|---|---|---|---|---|"]
    for (domain, trainer, attack), ms in sorted(cells(results).items(), key=lambda kv: (kv[0][0], kv[0][1] != PRODUCT, kv[0][1], not kv[0][2].startswith("none"), kv[0][2])):
        zs = ", ".join(f"{z:.2f}" for z, _ in ms)
        tpr = sum(p < ALPHA for _, p in ms)
        default = sum(p < 0.01 for _, p in ms)
        among = sum(min(1.0, p * 100 / N_COPIES) < ALPHA for _, p in ms)
        lines.append(f"| {domain} | {trainer} | {attack} | {len(ms)} | {zs} | {default}/{len(ms)} | {tpr}/{len(ms)} | {among}/{len(ms)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--write", type=Path, help="a doc holding <!-- table:transfer --> ... <!-- /table -->")
    args = ap.parse_args(argv)
    text = table(args.results)
    if args.write is None:
        print(text)
        return
    doc = args.write.read_text()
    start, end = "<!-- table:transfer -->\n", "\n<!-- /table -->"
    i, j = doc.index(start) + len(start), doc.index(end)
    args.write.write_text(doc[:i] + text + doc[j:])


if __name__ == "__main__":
    main()
