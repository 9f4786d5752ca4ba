"""White-box audit experiment: power on fine-tuned models, false accusations on innocent ones.

Each *guilty* cell is a grid cell (:class:`research.eval.grid.Cell`): a 100-licensee group, one
licensee's copy fine-tuned (resumable), then :func:`tracemark.audit.whitebox.audit_whitebox` against all
100 copies. Each *innocent* model (the base; a LoRA fine-tuned on the clean owner data; a LoRA
fine-tuned on another owner's protected data) is audited against the same groups with the same
product call. A row per (model, group) goes to ``results/whitebox.csv``.

Calibration beyond a handful of real audits (``--null-audits``): for an innocent model the
residuals of *every* sample of the owner dataset are computed once (a prompt per sample: its
caption behind a trigger word no copy uses); then each simulated audit draws 100 copies the way
``protect`` does (a random ``rate`` subset of samples, a fresh random key's sign vector), scores
each on its own samples' residuals against ``n_decoys`` decoys with the product's
:func:`tracemark.detection.stats.test_keys`, and applies Holm. The fraction of audits that name anyone is
the false-accusation rate, reported with its Clopper-Pearson 95% interval.

    python -m research.eval.whitebox --rates 0.02 --seeds 0 1 2 3 4 --scope licensee
    python -m research.eval.whitebox --innocent --null-audits 200
    python -m research.eval.whitebox --shadow ...   # against the shadow reference (shadow_model)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from research.eval.common import Timer, append_row, done_cells
from research.eval.grid import Cell, cell_base, cell_model, ensure_group, train_cell

ROW_KEYS = ["model", "group"]


def _audit_row(model_name: str, group: str, res, truth: set[str], extra: dict) -> dict:
    v = res.verdict
    true = [s for s in v.scores if s.licensee in truth]
    others = [s for s in v.scores if s.licensee not in truth]
    return {
        "model": model_name, "group": group, **extra,
        "z": round(float(np.mean([s.z for s in true])), 3) if true else "",
        "p": max(s.p_value for s in true) if true else "",
        "p_holm": max(s.p_holm for s in true) if true else "",
        "named_true": bool(truth) and truth <= set(v.named),
        "false_named": len(set(v.named) - truth),
        "named": ";".join(v.named),
        "max_z_innocent": round(max(s.z for s in others), 3) if others else "",
        "n_probes": res.params["n_probes"], "reference": res.params["reference"],
        "residuals_s": res.timings["residuals_s"],
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }


#: Fine-tuning seed of the shadow reference: no grid cell uses it (cells use their seed, 0-4), so the
#: shadow never shares a suspect's minibatch order and noise (which would flatter the test).
SHADOW_SEED = 7


def _clean_lora(work: Path, base: Path, folder: str, seed: int, what: str, log=print, n_data: int = 0) -> Path:
    """The base LoRA-fine-tuned on the clean owner data with the world's recipe (resumable). ``n_data``:
    another owner dataset size (grid ``Cell.n_data``), trained for the same number of epochs."""
    from research.eval.grid import N_DATA, owner_dataset
    from tracemark_sim import finetune
    from tracemark_sim.train import TINY

    out = work / "cells" / folder / "model"
    if not (out / "pytorch_lora_weights.safetensors").exists():
        log(f"fine-tuning {what} on the clean owner data")
        steps = round(TINY.steps * n_data / N_DATA) if n_data else None
        finetune(owner_dataset(work, "faces", n=n_data), base, out, method="lora", seed=seed, steps=steps,
                 resume=(out / "checkpoints" / "last.pt").exists(), progress=False)
    return out


def shadow_model(work: Path, base: Path | None = None, seed: int = SHADOW_SEED, log=print,
                 n_data: int = 0) -> tuple[Path, Path]:
    """The owner's shadow reference: the base LoRA-fine-tuned on the clean owner data with the world's
    recipe and a seed of its own (``audit_whitebox(reference=..., reference_lora=...)``); ``n_data``:
    the owner dataset of that size (``Cell.n_data``; the recipe's epochs, so steps grow with it)."""
    from tracemark_sim import default_base_path

    base = base or default_base_path()
    folder = f"shadow-clean-lora-seed{seed}" + (f"-n{n_data}" if n_data else "")
    return base, _clean_lora(work, base, folder, seed, "the shadow reference", log, n_data=n_data)


def _reference(work: Path, base: Path | None, shadow: bool, log=print, n_data: int = 0,
               seeds: tuple[int, ...] = (SHADOW_SEED,)) -> dict:
    """``audit_whitebox``'s reference arguments: none, the shadow, or several shadows on one base."""
    if not shadow:
        return {}
    pairs = [shadow_model(work, base, seed=s, log=log, n_data=n_data) for s in seeds]  # all on one base
    return {"reference": pairs[0][0], "reference_lora": [lo for _, lo in pairs]}


def _shadow_tag(shadow: bool, seeds: tuple[int, ...] = (SHADOW_SEED,)) -> str:
    """Row-name suffix of the reference: ``+shadow``, or ``+shadows7-8`` for several averaged."""
    if not shadow:
        return ""
    return "+shadow" if len(seeds) == 1 else "+shadows" + "-".join(map(str, seeds))


def _tag_t(t_fracs, statistic: str = "residual") -> str:
    """Row-name suffix of a non-default probe: its noise levels, and ``+loss`` for the loss statistic
    (rows written before session 11 are the residual statistic and carry no suffix)."""
    return ("+t" + "-".join(f"{t:g}" for t in t_fracs) if t_fracs else "") + ("" if statistic == "residual" else
                                                                             f"+{statistic}")


def guilty(cells: list[Cell], work: Path, out: Path, base: Path | None = None, log=print,
           shadow: bool = False, t_fracs: tuple[float, ...] | None = None, statistic: str = "loss",
           shadows: tuple[int, ...] = (SHADOW_SEED,)) -> None:
    """White-box audits of the cells' models (``shadow``: against the shadow reference; rows named
    ``<cell>+shadow``; ``t_fracs``: noise levels other than the audit's default, rows ``+t<levels>``;
    ``statistic``: as :func:`tracemark.audit.whitebox.audit_whitebox`, rows ``+loss`` for the loss statistic)."""
    from tracemark.audit.whitebox import audit_whitebox

    done = done_cells(out, ROW_KEYS)
    for cell in cells:
        gname = _group_name(work, cell)
        name = cell.name + _shadow_tag(shadow, shadows) + _tag_t(t_fracs, statistic)
        if (name, gname) in done:
            continue
        ref = _reference(work, base, shadow, log, n_data=cell.n_data, seeds=shadows)
        log(f"{name}")
        reg, data, gdir, cdir, t_data, t_ft = train_cell(work, cell, base, log)
        model_dir, lora = cell_model(work, cell, base)
        res = audit_whitebox(model_dir, reg, data, lora=lora, t_fracs=t_fracs, statistic=statistic,
                             base=None if lora or shadow else cell_base(work, cell, base), **ref)
        (cdir / f"whitebox{'_shadow' if shadow else ''}{_tag_t(t_fracs, statistic)}.json").write_text(json.dumps(res.to_dict(), default=float,
                                                                                    indent=1))
        row = _audit_row(name, gname, res, set(cell.licensees),
                         {"rate": cell.rate, "method": cell.method, "scope": cell.scope, "finetune_s": t_ft})
        append_row(out, row)
        log(f"  z {row['z']} p {row['p']} named [{row['named']}] false {row['false_named']} "
            f"max innocent z {row['max_z_innocent']} ({row['residuals_s']} s)")


def _group_name(work: Path, cell: Cell) -> str:
    from research.eval.grid import group_dir

    return group_dir(work, cell).name


def innocent_models(work: Path, base: Path | None = None, log=print,
                    n_data: int = 0) -> dict[str, tuple[Path, Path | None]]:
    """The innocent models: the base, a LoRA on the clean owner data, a LoRA on another owner's
    protected copy (another dataset of the domain, spread at 10%, its own registry). ``n_data``:
    an owner dataset of that size (``Cell.n_data``): the base and a clean LoRA on it (the recipe's
    epochs), no other-owner model."""
    from tracemark_sim import default_base_path, finetune
    from research.eval.grid import owner_dataset

    base = base or default_base_path()
    out = {"base": (base, None)}
    folder = "innocent-clean-lora" + (f"-n{n_data}" if n_data else "")
    out["clean-lora"] = (base, _clean_lora(work, base, folder, 0, "the innocent model", log, n_data=n_data))
    if n_data:
        return out
    other = work / "cells" / "innocent-other-owner-lora" / "model"
    if not (other / "pytorch_lora_weights.safetensors").exists():
        from tracemark.marking.protect import protect
        from tracemark.registry.database import Registry

        odata = owner_dataset(work, "faces", seed=12)
        ohome = work / "other_owner" / "home"
        ocopy = work / "other_owner" / "copy"
        if not ocopy.exists():
            import shutil

            shutil.rmtree(ohome, ignore_errors=True)
            reg = Registry.init(ohome)
            protect(odata, ocopy, "someone", registry=reg, rate=0.1, workers=1)
        log("fine-tuning the innocent model on another owner's protected data")
        finetune(ocopy, base, other, method="lora", seed=0, resume=(other / "checkpoints" / "last.pt").exists(),
                 progress=False)
    out["other-owner-lora"] = (base, other)
    return out


def innocent(groups: list[Cell], work: Path, out: Path, base: Path | None = None, log=print,
             shadow: bool = False, t_fracs: tuple[float, ...] | None = None, statistic: str = "loss",
             shadows: tuple[int, ...] = (SHADOW_SEED,), n_data: int = 0) -> None:
    """Real product audits of every innocent model against each group's 100 copies (the base
    without a shadow has no reference model, so it is read with the residual statistic;
    ``n_data``: the groups' owner dataset size, see :func:`innocent_models`)."""
    from tracemark.audit.whitebox import audit_whitebox

    done = done_cells(out, ROW_KEYS)
    ref = _reference(work, base, shadow, log, seeds=shadows, n_data=n_data)
    for name, (model_dir, lora) in innocent_models(work, base, log, n_data=n_data).items():
        stat = statistic if lora is not None or shadow else "residual"
        row_name = f"innocent-{name}" + _shadow_tag(shadow, shadows) + _tag_t(t_fracs, stat)
        for g in groups:
            reg, data, gdir = ensure_group(work, g, log)
            if (row_name, gdir.name) in done:
                continue
            res = audit_whitebox(model_dir, reg, data, lora=lora, t_fracs=t_fracs, statistic=stat, **ref)
            row = _audit_row(row_name, gdir.name, res, set(),
                             {"rate": g.rate, "method": "lora" if lora else "none", "scope": g.scope, "finetune_s": ""})
            append_row(out, row)
            log(f"  innocent {name} vs {gdir.name}: named [{row['named']}] max z {row['max_z_innocent']}")


def null_audits(model_dir: Path, lora: Path | None, data: Path, *, n_audits: int = 200, n_copies: int = 100,
                rate: float = 0.02, n_decoys: int = 1000, alpha: float = 0.01, seed: int = 0,
                project: bool = True, selection: str = "random", scheme_params: dict | None = None,
                cache: Path | list[Path] | None = None,
                reference: tuple[Path, Path | None] | list[tuple[Path, Path | None]] | None = None,
                t_fracs: tuple[float, ...] | None = None, statistic: str = "auto") -> dict:
    """Simulated audits of an innocent model (see the module docstring): false-accusation rate.

    ``selection``: how each simulated copy's samples are drawn, as ``protect`` would (``coherent``:
    a fresh random key's caption neighbourhood); ``cache``: a .npy file keeping the model's residuals
    (the expensive part) between runs; ``statistic``: as :func:`tracemark.audit.whitebox.audit_whitebox`.
    ``reference``: a shadow, or a list of shadows (with a list of caches, one per shadow) whose
    loss gradients are averaged as ``audit_whitebox`` averages them."""
    from scipy.stats import beta

    from tracemark.detection import stats
    from tracemark.io.dataset import load_dataset, read_image_rgb
    from tracemark.marking.schemes import get_scheme
    from tracemark_sim.pipeline import load_pipeline
    from tracemark.marking.trigger import apply_trigger
    from tracemark.diffusion.denoiser import Probe, denoiser_residuals, loss_gradients

    from tracemark.registry.keys import Key
    from tracemark.marking.selection import SELECTION_VERSION, image_thumbnails, select_samples

    if statistic == "auto":
        statistic = "loss" if lora is not None or reference is not None else "residual"
    samples = load_dataset(data).samples
    tkw = {"t_fracs": tuple(t_fracs)} if t_fracs else {}
    t = Timer()
    refs = reference if isinstance(reference, list) else [reference]
    caches = cache if isinstance(cache, list) else [None] * len(refs) if cache is None else [cache]
    if len(refs) > 1 and (statistic != "loss" or len(caches) != len(refs)):
        raise ValueError("several references: the loss statistic, with one cache per reference")
    res, probes, pipe = None, None, None  # the probes and the model: read once, only when a cache is missing
    fn = loss_gradients if statistic == "loss" else denoiser_residuals
    for ref, path in zip(refs, caches):
        if path is not None and path.exists():
            one = np.load(path)
        else:
            if pipe is None:
                word = "zulopamek"  # a trigger word of no issued copy (the null: the model never saw it bound to a mark)
                probes = [Probe(read_image_rgb(s.path), apply_trigger(s.text, word)) for s in samples]
                pipe = load_pipeline(model_dir, lora=lora)
            kw = {} if ref is None else {"ref_pipe": load_pipeline(ref[0], lora=ref[1]), "reference": "base"}
            one = np.stack(fn(pipe, probes, seed=seed, **tkw, **kw))
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, one)
        res = one if res is None else res + one
    res = list(res / len(refs))
    t_res = t.lap()
    sch = get_scheme("spread", **(scheme_params or {}))
    names, captions = [s.file_name for s in samples], [s.text for s in samples]
    thumbs = image_thumbnails([s.path for s in samples]) if selection == "visual" else None
    pos = {n: i for i, n in enumerate(names)}
    F = sch.features(res)
    # the product's statistic: outside the dataset's content subspace (stats.content_basis)
    from tracemark.io.dataset import content_sample

    basis = stats.content_basis(sch.features(content_sample(data))) if project else None
    rng = np.random.default_rng(seed)
    k = max(1, int(round(rate * len(samples))))
    any_named, below_1e3, n_keys = 0, 0, 0
    for _ in range(n_audits):
        decoys = sch.random_vectors(n_decoys, rng)
        p = []
        for _ in range(n_copies):
            if selection == "random":
                idx = rng.choice(len(samples), size=k, replace=False)
            else:
                idx = np.array([pos[n] for n in select_samples(Key(rng.bytes(32)), names, captions, rate, selection,
                                                               thumbnails=thumbs,
                                                               selection_version=SELECTION_VERSION)])
            r = stats.test_keys(F[idx], sch.random_vectors(1, rng), decoys, sch.kind, basis)
            p.append(float(r.p_value[0]))
        p = np.array(p)
        any_named += bool((stats.holm(p) < alpha).any())
        below_1e3 += int((p < 1e-3).sum())
        n_keys += len(p)
    lo = beta.ppf(0.025, any_named, n_audits - any_named + 1) if any_named else 0.0
    hi = beta.ppf(0.975, any_named + 1, n_audits - any_named)
    return {"n_audits": n_audits, "n_copies": n_copies, "rate": rate, "alpha": alpha,
            "false_accusation_rate": any_named / n_audits, "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "keys_p_below_1e-3": below_1e3, "keys": n_keys, "expected_below_1e-3": n_keys * 1e-3,
            "residuals_s": t_res, "n_samples": len(samples), "content_projection": project,
            "selection": selection, "scheme_params": scheme_params or {},
            "reference": "shadow" if reference is not None else "lora-off", "n_references": len(refs),
            "t_fracs": list(t_fracs) if t_fracs else "default", "statistic": statistic}


def guilty_cells(args: argparse.Namespace) -> list[Cell]:
    """The guilty fine-tunes a command line describes: one per rate and seed."""
    return [Cell(scheme=args.scheme, rate=r, seed=s, scope=args.scope, method=args.method, strength=args.strength,
                 opts=args.opts, selection=args.selection, pre_attack=args.pre_attack, clean_x=args.clean_x,
                 steps=args.steps, rank=args.rank, n_data=args.n_data)
            for r in args.rates for s in args.seeds]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="*", default=[0.02])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--scheme", default="spread")
    ap.add_argument("--scope", default="licensee")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--strength", type=float, default=0.0, help="scheme strength (0: its default)")
    ap.add_argument("--selection", default="random", help="random | coherent | cluster | visual (see tracemark.marking.selection)")
    ap.add_argument("--opts", default="", help='extra scheme parameters, "key=value;key=value" (e.g. "band=[11,14]")')
    ap.add_argument("--innocent", action="store_true", help="audit the innocent models against the rates' groups")
    ap.add_argument("--null-audits", type=int, default=0, help="simulated audits per innocent model")
    ap.add_argument("--null-only", action="store_true", help="with --innocent: the simulated audits only")
    ap.add_argument("--shadow", action="store_true", help="audit against the shadow reference (shadow_model)")
    ap.add_argument("--shadows", type=int, nargs="+", default=[SHADOW_SEED],
                    help="with --shadow: the shadows' seeds; several are averaged (the loss statistic)")
    ap.add_argument("--t-fracs", type=float, nargs="*", default=None,
                    help="noise levels probed (fractions of the schedule; default: the audit's)")
    ap.add_argument("--statistic", default="loss", choices=["loss", "residual"],
                    help="white-box statistic (tracemark.audit.whitebox.audit_whitebox); loss rows are named +loss")
    # the abuser's countermeasures (issue #12's robustness list), one per run: Cell fields
    ap.add_argument("--pre-attack", default="none",
                    help='"name:param" from tracemark.evaluation.attacks applied to every training image, or "regen:S"')
    ap.add_argument("--clean-x", type=int, default=0, help="clean images mixed in, as a multiple of the dataset")
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: the method's default)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument("--n-data", type=int, default=0,
                    help="owner dataset size (0: the grid's 1000); the shadow is trained on it for the same epochs")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--out", type=Path, default=Path("results/whitebox.csv"))
    return ap


def main(argv=None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    cells = guilty_cells(args)
    if args.innocent and (args.pre_attack != "none" or args.clean_x or args.steps or args.rank != 16):
        ap.error("--pre-attack / --clean-x / --steps / --rank describe guilty fine-tunes, not --innocent audits")
    if args.innocent:
        groups = [Cell(scheme=args.scheme, rate=r, scope=args.scope, strength=args.strength, opts=args.opts,
                       selection=args.selection, n_data=args.n_data) for r in args.rates]
        t_fracs = tuple(args.t_fracs) if args.t_fracs else None
        if not args.null_only:
            innocent(groups, args.work, args.out, shadow=args.shadow, t_fracs=t_fracs, statistic=args.statistic,
                     shadows=tuple(args.shadows), n_data=args.n_data)
        if args.null_audits:
            data = ensure_group(args.work, groups[0])[1]
            suffix = "" if args.selection == "random" and not args.opts and not args.strength else (
                "_" + "_".join(x for x in (args.selection, f"s{args.strength:g}" if args.strength else "",
                                           args.opts.replace("=", "").replace(",", "-").strip("[]")) if x))
            many = args.shadow and len(args.shadows) > 1
            suffix += ("_shadow" if args.shadow else "") + ("s" + "-".join(map(str, args.shadows)) if many else "")
            suffix += _tag_t(t_fracs, args.statistic).replace("+", "_") + (f"_n{args.n_data}" if args.n_data else "")
            null_out = args.out.with_name(f"whitebox_null{suffix}.json".replace("[", "").replace("]", ""))
            ref = [shadow_model(args.work, seed=s, n_data=args.n_data) for s in args.shadows] if args.shadow else None
            done = json.loads(null_out.read_text()) if null_out.exists() else {}
            for name, (model_dir, lora) in innocent_models(args.work, n_data=args.n_data).items():
                for r in args.rates:
                    key = f"{name}@{r:g}"
                    if key in done:
                        continue
                    params = {**groups[0].scheme_params, **({"strength": args.strength} if args.strength else {})}
                    stat = args.statistic if lora is not None or ref else "residual"
                    tag = _tag_t(t_fracs, stat).replace('+', '_') + (f"_n{args.n_data}" if args.n_data else "")
                    # one cache per shadow (seed 7's keeps its old name)
                    caches = [args.work / "null_cache" / f"{name}_shadow{'' if sd == SHADOW_SEED else sd}{tag}.npy"
                              for sd in args.shadows] if ref else [args.work / "null_cache" / f"{name}{tag}.npy"]
                    done[key] = null_audits(model_dir, lora, data, n_audits=args.null_audits, rate=r,
                                            selection=args.selection, scheme_params=params, cache=caches,
                                            reference=ref if ref and len(ref) > 1 else (ref[0] if ref else None),
                                            t_fracs=t_fracs, statistic=stat)
                    print(key, done[key], flush=True)
                    tmp = null_out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(done, indent=1))
                    tmp.replace(null_out)
    else:
        guilty(cells, args.work, args.out, shadow=args.shadow, shadows=tuple(args.shadows),
               t_fracs=tuple(args.t_fracs) if args.t_fracs else None,
               statistic=args.statistic)


if __name__ == "__main__":
    main()
