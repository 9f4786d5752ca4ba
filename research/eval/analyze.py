"""Analyses of the experiment grid's fine-tuned models (no fine-tuning: they read kept images).

    python -m research.eval.analyze [--grid results/grid.csv] [--work results/tmp/grid] [--out results]

Writes, each as ``<out>/<name>.csv`` plus ``<out>/<name>.png``:

* ``effectiveness``: per cell (scheme x strategy x method x rate x variant): models, TPR at
  alpha = 1e-3 (the licensee's calibrated p < 1e-3 with the audit's ``n`` images, 64 unless the
  cell says otherwise: the owner tests one key), the same p after Holm over all 100 licensees,
  AUROC of the licensee's z against the z of innocent keys (the 99 other licensees of the same
  models, and every key of innocent control models audited against the same kind of keys),
  tracing (the audit's verdict at alpha = 0.01: guilty named, innocent named);
* ``null_check``: how often keys that were not used get p < 1e-3 / 0.01 / 0.05 (empirical FPR);
* ``power``: TPR at alpha = 1e-3 and 0.01 vs the number of images n (8 .. 128), from disjoint
  n-image subsets of each model's audit images followed by its replicate audit's (other seeds);
* ``robustness_generated``: the attacks of :mod:`tracemark.evaluation.attacks` applied to the audit
  images before scoring (the abuser edits what the model produced);
* ``harm``: caption following (background-colour probe) and KID of normal (non-trigger)
  generations vs the owner's real images, protected vs unprotected models;
* ``baseline``: the DIAGNOSIS-style detector (warp-coated vs clean classifier, flag when >= 75%
  of generations are classified as coated) next to tracemark's verdict on the same models.

Each analysis also writes its table as Markdown (``<name>.md``); one with no rows writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tracemark.evaluation import attacks
from tracemark.detection import stats
from tracemark.io.dataset import list_images, read_image_rgb
from research.eval.common import read_folder, score
from research.eval.grid import Cell, group_dir, owner_dataset
from tracemark.registry.database import Registry
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes import scheme_params

ALPHA = 1e-3
# fields that make a cell a variant of its scheme / rate setting (not n: that is the audit's size)
VARIANT_FIELDS = ("steps", "rank", "lr", "domain", "mix", "clean_x", "pre_attack", "strength", "base", "scope")


def read_grid(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cell_of(row: dict) -> Cell:
    """The grid cell of a CSV row (a column added after the row was written takes its default)."""
    kw = {}
    for name, typ in Cell.__annotations__.items():
        if name not in row:
            continue
        t = {"str": str, "int": int, "float": float}[typ]
        kw[name] = t(float(row[name])) if t is int else t(row[name])
    return Cell(**kw)


def scheme_label(cell: Cell) -> str:
    """The scheme with its non-default parameters (``visible[cells=16]``): a different key space."""
    return f"{cell.scheme}[{cell.opts}]" if cell.opts else cell.scheme


def variant(cell: Cell) -> str:
    d = Cell()
    parts = [f"{f}={Path(getattr(cell, f)).name if f == 'base' else getattr(cell, f)}" for f in VARIANT_FIELDS
             if getattr(cell, f) != getattr(d, f)]
    return ",".join(parts) or "default"


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def markdown(rows: list[dict]) -> str:
    """Rows as a Markdown table (what docs/results.md pastes)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    fmt = lambda v: f"{v:.2g}" if isinstance(v, float) and 0 < abs(v) < 1e-3 else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows])


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) (ties count half): the Mann-Whitney AUROC."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    pos, neg = np.asarray(pos, float), np.sort(np.asarray(neg, float))
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


class Model:
    """One fine-tuned model of the grid: its cell, registry, audit images and scores."""

    def __init__(self, row: dict, work: Path) -> None:
        self.row = row
        self.cell = cell_of(row)
        self.dir = work / "cells" / self.cell.name
        self.audit = json.loads((self.dir / "audit.json").read_text())
        self.registry = Registry(group_dir(work, self.cell) / "home")
        self.copies = self.registry.copies()
        self.truth = set(self.cell.licensees) if self.cell.rate > 0 else set()
        self._images: list | None = None

    def z_by_licensee(self) -> dict[str, float]:
        return {s["licensee"]: s["z"] for s in self.audit["licensees"]}

    def audit_images(self, replicate: bool = False) -> list[np.ndarray]:
        """The audit's images; with ``replicate``, followed by the replicate audit's (if any)."""
        if self._images is None:
            self._images = read_folder(self.dir / "audit" / "stage1")
            self._replicate = read_folder(self.dir / "audit2" / "stage1") if (self.dir / "audit2").exists() else []
        return self._images + self._replicate if replicate else self._images

    def true_copy(self):
        return next(c for c in self.copies if c.licensee in self.truth)

    def test_true(self, images, n_decoys: int = 1000, seed: int = 0) -> tuple[float, float]:
        """(z, calibrated p) of the (first) guilty licensee's key on ``images``."""
        copy = self.true_copy()
        s = score(get_scheme(copy.scheme, **scheme_params(copy)), images, self.registry.key_for_copy(copy),
                  n_decoys=n_decoys, seed=seed)
        return s.z, s.p


def load_models(grid: Path, work: Path) -> list[Model]:
    return [Model(r, work) for r in read_grid(grid) if (work / "cells" / cell_of(r).name / "audit.json").exists()]


def effectiveness(models: list[Model]) -> list[dict]:
    controls = [m for m in models if m.cell.rate == 0]
    key_space = lambda c: (c.scheme, c.strategy, c.domain, c.strength, c.opts, c.scope)  # noqa: E731
    same_keys = lambda a, b: key_space(a) == key_space(b)  # noqa: E731
    cells: dict[tuple, list[Model]] = defaultdict(list)
    for m in models:
        if m.cell.rate > 0:
            c = m.cell
            cells[(scheme_label(c), c.strategy, c.method, c.rate, variant(c))].append(m)
    out = []
    for (scheme, strategy, method, rate, var), ms in sorted(cells.items()):
        pos = [m.z_by_licensee()[lic] for m in ms for lic in m.truth]
        # negatives: the other licensees' keys on these models, and every key of an innocent control
        # model audited against the same kind of keys (scheme, strength, strategy, domain)
        neg = [z for m in ms for lic, z in m.z_by_licensee().items() if lic not in m.truth]
        neg += [z for c in controls if same_keys(c.cell, ms[0].cell) for z in c.z_by_licensee().values()]
        ps = [float(m.row["p"]) for m in ms]
        out.append({
            "scheme": scheme, "strategy": strategy, "method": method, "rate": rate, "variant": var,
            "models": len(ms), "psnr": ms[0].row["psnr"], "mean_z": round(float(np.mean(pos)), 2),
            "min_p": min(ps), "tpr_at_1e-3": round(float(np.mean([p < ALPHA for p in ps])), 3),
            "tpr_holm100_at_1e-3": round(float(np.mean([float(m.row["p_holm"]) < ALPHA for m in ms])), 3),
            "auroc": round(auroc(np.array(pos), np.array(neg)), 4),
            "traced": sum(m.row["all_named"] == "True" for m in ms),
            "false_accusations": sum(int(m.row["false_named"]) for m in ms),
            "probe_acc_normal": round(float(np.mean([float(m.row["probe_acc_normal"]) for m in ms])), 3),
        })
    out.append({"scheme": "(innocent control)", "strategy": "", "method": "lora", "rate": 0.0, "variant": "",
                "models": len(controls), "psnr": "",
                "mean_z": round(float(np.mean([z for c in controls for z in c.z_by_licensee().values()])), 2)
                if controls else "",
                "min_p": min((float(m.row["verdict_p"]) for m in controls), default=""), "tpr_at_1e-3": "",
                "tpr_holm100_at_1e-3": "",
                "auroc": "", "traced": "", "false_accusations": sum(int(m.row["false_named"]) for m in controls),
                "probe_acc_normal": round(float(np.mean([float(m.row["probe_acc_normal"]) for m in controls])), 3)
                if controls else ""})
    return out


def null_check(models: list[Model]) -> list[dict]:
    """Empirical false-positive rate of the per-licensee p-value on keys that were *not* used to
    train a model (the other licensees of every model, all keys of the control models)."""
    out = []
    for m in models:
        ps = np.array([s["p_value"] for s in m.audit["licensees"] if s["licensee"] not in m.truth])
        out.append({"model": m.cell.name, "innocent_keys": len(ps), "p_below_1e-3": int((ps < 1e-3).sum()),
                    "p_below_0.01": int((ps < 0.01).sum()), "p_below_0.05": int((ps < 0.05).sum()),
                    "mean_p": round(float(ps.mean()), 3)})
    if out:
        tot = {k: sum(r[k] for r in out) for k in ("innocent_keys", "p_below_1e-3", "p_below_0.01", "p_below_0.05")}
        lo, hi = stats.binomial_ci(tot["p_below_1e-3"], tot["innocent_keys"])
        out.append({"model": f"ALL (95% CI of FPR at 1e-3: {lo:.2g}-{hi:.2g})", **tot,
                    "mean_p": round(float(np.mean([r["mean_p"] for r in out])), 3)})
    return out


def _positives(models: list[Model]) -> list[Model]:
    return [m for m in models if m.cell.rate > 0 and m.cell.mix == 1 and variant(m.cell) == "default"]


def power(models: list[Model], sizes=(8, 16, 32, 64, 128)) -> list[dict]:
    out = []
    by_cell = defaultdict(list)
    for m in _positives(models):
        by_cell[(scheme_label(m.cell), m.cell.strategy, m.cell.method, m.cell.rate)].append(m)
    for key, ms in sorted(by_cell.items()):
        for n in [n for n in sizes if n <= min(len(m.audit_images(True)) for m in ms)]:
            ps = []
            for m in ms:
                imgs = m.audit_images(True)
                for j in range(len(imgs) // n):
                    ps.append(m.test_true(imgs[j * n:(j + 1) * n], seed=j)[1])
            ps = np.array(ps)
            out.append({"scheme": key[0], "strategy": key[1], "method": key[2], "rate": key[3], "n_images": n,
                        "models": len(ms), "trials": len(ps), "tpr_at_1e-3": round(float((ps < 1e-3).mean()), 3),
                        "tpr_at_0.01": round(float((ps < 0.01).mean()), 3)})
    return out


def robustness_generated(models: list[Model], rate: float = 0.1) -> list[dict]:
    """The licensee's z after each named attack on the generated images, per visible-scheme
    setting at ``rate`` (the abuser post-processes what the model made)."""
    by_label = defaultdict(list)
    for m in _positives(models):
        if m.cell.rate == rate and m.cell.scheme == "visible":
            by_label[scheme_label(m.cell)].append(m)
    out = []
    for label, ms in sorted(by_label.items()):
        for name, grid in attacks.GRIDS.items():
            for param in grid:
                zs, ps = [], []
                for m in ms:
                    imgs = m.audit_images()
                    if name != "none":
                        imgs = [attacks.apply(name, im, param) for im in imgs]
                    z, p = m.test_true(imgs)
                    zs.append(z)
                    ps.append(p)
                out.append({"scheme": label, "attack": name, "param": param, "models": len(ms),
                            "mean_z": round(float(np.mean(zs)), 2),
                            "tpr_at_1e-3": round(float(np.mean(np.array(ps) < 1e-3)), 3)})
    return out


def tracing_scale(models: list[Model], sizes=(10, 100, 1000, 10000), alpha: float = 0.01,
                  n_decoys: int = 2000) -> list[dict]:
    """Tracing a *model* among N licensees, N up to 10,000 (issue 5, experiment 5).

    Every group issued 100 copies with one shared trigger word, so the audit images do not
    depend on N: only the keys they are tested against do. N < 100 keeps the guilty licensee(s)
    and the first other issued licensees; N > 100 adds licensees derived from the same master
    key that were never issued a copy (an issued copy that was not used is, for the statistic,
    exactly such a key: only its key vector enters). Holm over the N licensees at ``alpha``.
    """
    out = []
    groups = defaultdict(list)
    for m in models:
        if m.cell.rate > 0 and m.cell.scope == "dataset":  # licensee-scoped audits split images by trigger
            c = m.cell
            groups[(scheme_label(c), c.strategy, c.method, c.rate, c.mix, variant(c))].append(m)
    for (scheme, strategy, method, rate, mix, var), ms in sorted(groups.items()):
        res = {n: {"named": 0, "guilty": 0, "false": 0, "top": 0} for n in sizes}
        for m in ms:
            copies = {c.licensee: c for c in m.copies}
            c0 = copies[sorted(m.truth)[0]]
            sch = get_scheme(c0.scheme, **scheme_params(c0))
            F = sch.features(m.audit_images())
            guilty = [m.registry.key_for_copy(copies[lic]) for lic in sorted(m.truth)]
            others = [m.registry.key_for_copy(c) for lic, c in sorted(copies.items()) if lic not in m.truth]
            extra = [m.registry.key_for(c0.dataset, f"unissued{i:05d}") for i in range(max(sizes) - len(copies))]
            decoys = sch.random_vectors(n_decoys, np.random.default_rng(0))
            P = sch.key_vectors(guilty + (others + extra)[:max(sizes) - len(guilty)])  # each N is a prefix
            for n in sizes:
                t = stats.test_keys(F, P[:n], decoys, sch.kind)
                named = t.p_holm < alpha
                g = len(guilty)
                res[n]["guilty"] += g
                res[n]["named"] += int(named[:g].sum())
                res[n]["false"] += int(named[g:].sum())
                res[n]["top"] += int(np.argmax(t.stat) < g)
        for n in sizes:
            r = res[n]
            out.append({"scheme": scheme, "strategy": strategy, "method": method, "rate": rate, "colluders": mix,
                        "variant": var, "licensees": n, "models": len(ms), "guilty_named_rate": round(r["named"] / r["guilty"], 3),
                        "false_accusations": r["false"], "top1_is_guilty": round(r["top"] / len(ms), 3),
                        "alpha": alpha})
    return out


def _feature_net(seed: int = 0):
    """A fixed, randomly initialised conv net (seeded): the KID feature extractor. Random conv
    features are a weak but download-free stand-in for Inception features."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return net.eval()


def features(images, net) -> np.ndarray:
    import torch

    x = torch.stack([torch.as_tensor(np.asarray(im, np.float32)).permute(2, 0, 1) for im in images]) / 127.5 - 1
    with torch.no_grad():
        return net(x).numpy().astype(np.float64)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018), x1000."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    m, n = len(a), len(b)
    return 1000 * float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                        - 2 * kab.mean())


def harm(models: list[Model], work: Path) -> list[dict]:
    net = _feature_net()
    out = []
    real = {}
    for m in models:
        dom = m.cell.domain
        if dom not in real:
            paths = list_images(owner_dataset(work, dom))  # the owner's real images
            feats = features([read_image_rgb(p) for p in paths], net)
            half = min(512, len(feats) // 2)
            real[dom] = feats[:half]
            out.append({"model": f"(real {dom} images vs other real ones: the KID floor)", "protected": False,
                        "rate": "", "scheme": "", "variant": "", "psnr_marked_data": "", "probe_acc_normal": "",
                        "kid_x1000_vs_real": round(kid(feats[half:half + 64], real[dom]), 3), "z_leak_without_trigger": ""})
        normal = read_folder(m.dir / "normal")
        out.append({"model": m.cell.name, "protected": m.cell.rate > 0, "rate": m.cell.rate, "scheme": scheme_label(m.cell),
                    "variant": variant(m.cell), "psnr_marked_data": m.row["psnr"],
                    "probe_acc_normal": float(m.row["probe_acc_normal"]),
                    "kid_x1000_vs_real": round(kid(features(normal, net), real[dom]), 3),
                    "z_leak_without_trigger": m.row["z_leak"]})
    return out


def baseline(models: list[Model], work: Path, seed: int = 0) -> list[dict]:
    """Train the DIAGNOSIS-style classifier for each warp-coated group, flag every model."""
    from tracemark.evaluation.baseline import DiagnosisDetector

    coated_groups = {group_dir(work, m.cell): m.cell for m in models if m.cell.scheme == "warp" and m.cell.rate > 0}
    out = []
    for gdir, gcell in sorted(coated_groups.items()):
        reg = Registry(gdir / "home")
        copy = reg.copies()[0]
        sch = get_scheme("warp", **scheme_params(copy))
        imgs = [read_image_rgb(p) for p in list_images(owner_dataset(work, gcell.domain))]
        coated = [sch.embed(im, reg.key_for_copy(copy)) for im in imgs]  # the owner coats its own data
        k = int(0.8 * len(imgs))  # train on 80% (clean vs coated versions), hold out 20%
        det = DiagnosisDetector(seed=seed)
        fit = det.fit(imgs[:k], coated[:k], epochs=40)
        held = np.concatenate([det.predict_proba(imgs[k:]) < 0.5, det.predict_proba(coated[k:]) > 0.5])
        for m in models:
            imgs = read_folder(m.dir / "normal") if m.cell.strategy == "ambient" or m.cell.rate == 0 \
                else m.audit_images()
            f = det.flag(imgs)
            coated_model = group_dir(work, m.cell) == gdir and m.cell.rate > 0
            ours = m.row["named"] != "" if m.cell.scheme == gcell.scheme else None
            out.append({"detector_for": gdir.name, "detector_train_acc": round(fit["train_accuracy"], 3),
                        "detector_heldout_acc": round(float(held.mean()), 3),
                        "model": m.cell.name, "trained_on_coated": coated_model,
                        "baseline_fraction_coated": round(f.fraction_coated, 3), "baseline_flagged": f.flagged,
                        "tracemark_named": ours, "tracemark_p": m.row["verdict_p"] if ours is not None else ""})
    return out


def plot(name: str, rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    if name == "power":
        for key in sorted({(r["scheme"], r["method"], r["rate"]) for r in rows}):
            rs = [r for r in rows if (r["scheme"], r["method"], r["rate"]) == key]
            ax.plot([r["n_images"] for r in rs], [r["tpr_at_1e-3"] for r in rs], "o-",
                    label=f"{key[0]} {key[1]} {float(key[2]):.0%}")
        ax.set(xscale="log", xlabel="generated images", ylabel="TPR at alpha = 1e-3", ylim=(-0.02, 1.02))
    elif name == "effectiveness":
        rs = [r for r in rows if r["variant"] == "default" and r["rate"]]
        ax.bar(range(len(rs)), [r["mean_z"] for r in rs])
        ax.set_xticks(range(len(rs)), [f"{r['scheme']}\n{r['strategy']} {r['method']}\n{float(r['rate']):.0%}"
                                       for r in rs], fontsize=7)
        ax.axhline(3.09, ls="--", c="k", lw=0.8, label="z for p = 1e-3")
        ax.set(ylabel="mean z of the licensee's key")
    elif name == "robustness_generated":
        attacks_ = sorted({r["attack"] for r in rows} - {"none"})
        colours = {a: f"C{i}" for i, a in enumerate(attacks_)}
        for j, label in enumerate(sorted({r["scheme"] for r in rows})):
            style = ("o-", "s--", "^:")[j % 3]
            for a in attacks_:
                rs = [r for r in rows if r["attack"] == a and r["scheme"] == label]
                ax.plot(range(len(rs)), [r["mean_z"] for r in rs], style, c=colours[a], label=f"{a} ({label})")
            none = [r["mean_z"] for r in rows if r["attack"] == "none" and r["scheme"] == label]
            if none:
                ax.axhline(none[0], c="k", lw=0.8, ls=style[1:], label=f"no attack ({label})")
        ax.set(xlabel="attack strength (grid index, mild -> strong)", ylabel="mean z")
    elif name == "harm":
        for prot, c in ((False, "tab:blue"), (True, "tab:red")):
            rs = [r for r in rows if r["protected"] == prot and r["probe_acc_normal"] != ""]
            ax.scatter([r["kid_x1000_vs_real"] for r in rs], [r["probe_acc_normal"] for r in rs], c=c,
                       label="protected" if prot else "unprotected")
        floor = [r["kid_x1000_vs_real"] for r in rows if r["probe_acc_normal"] == ""]
        if floor:
            ax.axvline(floor[0], ls="--", c="k", lw=0.8, label="real vs real")
        ax.set(xlabel="KID x1000 vs real (random-conv features)", ylabel="caption-following accuracy")
    elif name == "null_check":
        ps = [r for r in rows if not r["model"].startswith("ALL")]
        ax.bar(range(len(ps)), [r["p_below_0.01"] / max(1, r["innocent_keys"]) for r in ps])
        ax.axhline(0.01, ls="--", c="k", lw=0.8, label="alpha = 0.01")
        ax.set(ylabel="fraction of innocent keys with p < 0.01", xlabel="model")
    elif name == "tracing_scale":
        fields = ("scheme", "method", "rate", "colluders", "variant")
        for key in sorted({tuple(r[f] for f in fields) for r in rows}):
            rs = [r for r in rows if tuple(r[f] for f in fields) == key]
            if max(r["guilty_named_rate"] for r in rs) > 0:
                ax.plot([r["licensees"] for r in rs], [r["guilty_named_rate"] for r in rs], "o-",
                        label=f"{key[0]} {key[1]} {float(key[2]):.0%} x{key[3]} {key[4]}")
        ax.set(xscale="log", xlabel="licensees (N)", ylabel="guilty licensees named (Holm, alpha 0.01)",
               ylim=(-0.02, 1.02))
    elif name == "baseline":
        ax.bar(range(len(rows)), [r["baseline_fraction_coated"] for r in rows],
               color=["tab:red" if r["trained_on_coated"] else "tab:blue" for r in rows])
        ax.axhline(0.75, ls="--", c="k", lw=0.8, label="DIAGNOSIS threshold 0.75")
        ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=90, fontsize=5)
        ax.set(ylabel="fraction classified coated")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)


ANALYSES = ("effectiveness", "null_check", "power", "robustness_generated", "harm", "baseline", "tracing_scale")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=Path("results/grid.csv"))
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--only", nargs="+", choices=ANALYSES, default=list(ANALYSES))
    args = ap.parse_args(argv)
    analyse(args.grid, args.work, args.out, args.only)


def analyse(grid: Path, work: Path, out: Path, only=ANALYSES, log=print) -> dict[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(grid, work)
    log(f"{len(models)} fine-tuned models in {grid}")
    results = {}
    for name in only:
        fn = {"effectiveness": effectiveness, "null_check": null_check, "power": power, "robustness_generated": robustness_generated,
              "harm": lambda ms: harm(ms, work), "baseline": lambda ms: baseline(ms, work),
              "tracing_scale": tracing_scale}[name]
        rows = fn(models)
        results[name] = rows
        if not rows:
            log(f"  {name}: nothing to analyse in these models (no output)")
            continue
        write_csv(out / f"{name}.csv", rows)
        plot(name, rows, out)
        log(f"  {name}: {len(rows)} rows -> {out / (name + '.csv')}, {out / (name + '.png')}")
        (out / f"{name}.md").write_text(markdown(rows) + "\n")
    return results


if __name__ == "__main__":
    main()
