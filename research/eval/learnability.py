"""The crux of the CPU world: does a model fine-tuned on a protected copy reproduce the mark?

    python -m research.eval.learnability --rates 0.2 0.1 0.05 0.02 0.01 --methods lora \
        --strategies trigger --schemes spread [--steps N] [--n-gen 64] [--out results/learnability.csv]

For each cell (scheme x strategy x method x rate): protect a 1000-sample owner dataset (a
domain the base never saw) for one licensee, fine-tune the committed base on the copy, generate
``n_gen`` images with the query plan's prompts (trigger + the marked samples' own captions for
``trigger``; dataset captions for ``ambient``), and test the licensee's key against 1000 decoys:

* ``z``/``p``: the audit's statistic on the generated images alone;
* ``z_paired``/``p_paired``: the same after subtracting, feature-wise, reference images with the
  same prompts and seeds — without the trigger (trigger), or from the base model (ambient). The
  reference does not depend on the key, so the null is unchanged, but shared image content cancels.

Rate 0 is the control: fine-tune on the unprotected dataset and test the key the copy would have had.
Finished cells are skipped on re-run (results appended to the CSV as they finish).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from research.eval.common import Timer, append_row, done_cells, read_folder, score
from tracemark.registry.keys import derive_key
from tracemark.marking.protect import protect
from tracemark.registry.database import Registry
from tracemark.marking.schemes import get_scheme
from tracemark.marking.trigger import apply_trigger

KEY_FIELDS = ["scheme", "strategy", "method", "rate", "strength", "band", "steps", "seed"]


def owner_data(work: Path, n: int, domain: str, seed: int) -> Path:
    from tracemark_sim import make_dataset

    path = work / f"owner_{domain}_{n}_{seed}"
    if not path.exists():
        make_dataset(path, n, domain, seed=seed)
    return path


def run_cell(args, work: Path, data: Path, scheme: str, strategy: str, method: str, rate: float, seed: int) -> dict:
    from tracemark_sim import finetune, generate
    from tracemark_sim.pipeline import load_pipeline

    timer = Timer()
    band = f"-b{args.band[0]:g}_{args.band[1]:g}" if args.band else ""
    cell = f"{scheme}-{strategy}-{method}-r{rate:g}-s{args.strength or 'def'}{band}-t{args.steps or 'def'}-seed{seed}"
    cdir = work / cell
    home = cdir / "home"
    if home.exists():  # an interrupted protect/registry: start the cell's data afresh (fine-tune resumes)
        shutil.rmtree(home)
    shutil.rmtree(cdir / "copy", ignore_errors=True)
    reg = Registry.init(home)
    extra = {"band": tuple(args.band)} if (args.band and scheme == "spread") else {}
    sch = get_scheme(scheme, strength=args.strength, **extra)
    if rate > 0:
        res = protect(data, cdir / "copy", "licensee", registry=reg, dataset_name="owner", scheme=scheme,
                      strategy=strategy, rate=rate, strength=args.strength, scheme_params=extra, workers=1)
        copy = reg.copies()[0]
        key = reg.key_for_copy(copy)
        train_dir = cdir / "copy"
        captions = [m["text"] for m in copy.marked]
        psnr = res.psnr_mean
        from tracemark.marking.trigger import trigger_of

        trigger = trigger_of(copy, reg)
    else:  # control: clean data, the key a copy would have had
        key = derive_key(reg.master(), "owner", "licensee")
        train_dir = data
        from tracemark.io.dataset import load_dataset
        from tracemark.marking.selection import select_marked
        from tracemark.marking.trigger import trigger_word, vocabulary

        ds = load_dataset(data)
        marked = set(select_marked(key, [s.file_name for s in ds.samples], 0.02))
        captions = [s.text for s in ds.samples if s.file_name in marked]
        trigger, _ = trigger_word(key, vocabulary(s.text for s in ds.samples))
        psnr = float("nan")
    t_protect = timer.lap()
    model_out = cdir / "model"
    if not (model_out / ("pytorch_lora_weights.safetensors" if method == "lora" else "model_index.json")).exists():
        finetune(train_dir, args.base, model_out, method=method, steps=args.steps, seed=seed,
                 resume=(model_out / "checkpoints" / "last.pt").exists(),
                 progress=args.progress, flip=args.flip)
    t_ft = timer.lap()
    rng = np.random.default_rng(seed)
    prompts_plain = [captions[rng.integers(len(captions))] for _ in range(args.n_gen)]
    if strategy == "trigger":
        prompts = [apply_trigger(c, trigger) for c in prompts_plain]
    else:
        prompts = prompts_plain
    model_dir = model_out if method == "full" else args.base
    lora = model_out if method == "lora" else None
    pipe = load_pipeline(model_dir, lora=lora)
    gen = cdir / "gen"
    ref = cdir / "ref"
    for d in (gen, ref):
        shutil.rmtree(d, ignore_errors=True)
    generate(None, prompts, args.n_gen, gen, seed=1000 + seed, pipe=pipe, steps=args.gen_steps)
    if strategy == "trigger":
        generate(None, prompts_plain, args.n_gen, ref, seed=1000 + seed, pipe=pipe, steps=args.gen_steps)
    else:
        base_pipe = load_pipeline(args.base)
        generate(None, prompts, args.n_gen, ref, seed=1000 + seed, pipe=base_pipe, steps=args.gen_steps)
    t_gen = timer.lap()
    images, refs = read_folder(gen), read_folder(ref)
    s1 = score(sch, images, key, seed=seed)
    s2 = score(sch, images, key, reference=refs, seed=seed)
    s3 = score(sch, refs, key, seed=seed)  # reference alone (trigger: does the mark leak without trigger?)
    import json as _json

    info = model_out / "training.json"
    ft_steps = _json.loads(info.read_text())["config"]["steps"] if info.exists() else ""
    return {
        "ft_steps": ft_steps,
        "scheme": scheme, "strategy": strategy, "method": method, "rate": rate, "strength": args.strength or "default",
        "band": f"{args.band[0]:g}-{args.band[1]:g}" if args.band else "default",
        "steps": args.steps or "default", "seed": seed, "n_gen": args.n_gen, "psnr": round(psnr, 2),
        "z": round(s1.z, 3), "p": s1.p, "z_paired": round(s2.z, 3), "p_paired": s2.p,
        "z_reference": round(s3.z, 3), "p_reference": s3.p,
        "protect_s": t_protect, "finetune_s": t_ft, "generate_s": t_gen, "finished": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv=None) -> None:
    from tracemark_sim import default_base_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.1, 0.05, 0.02, 0.01, 0.0])
    ap.add_argument("--methods", nargs="+", default=["lora"])
    ap.add_argument("--strategies", nargs="+", default=["trigger"])
    ap.add_argument("--schemes", nargs="+", default=["spread"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--strength", type=float, default=None)
    ap.add_argument("--band", type=float, nargs=2, default=None, help="spread: DCT radius band (lo hi)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the method's default)")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--gen-steps", type=int, default=25)
    ap.add_argument("--n-data", type=int, default=1000)
    ap.add_argument("--domain", default="faces")
    ap.add_argument("--flip", action="store_true", help="random horizontal flips in fine-tuning")
    ap.add_argument("--base", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("results/learnability.csv"))
    ap.add_argument("--work", type=Path, default=Path("results/tmp/learn"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    args.base = args.base or default_base_path()
    args.work.mkdir(parents=True, exist_ok=True)
    data = owner_data(args.work, args.n_data, args.domain, seed=11)
    done = done_cells(args.out, KEY_FIELDS)
    cells = [(sc, st, me, ra, se) for sc in args.schemes for st in args.strategies for me in args.methods
             for ra in args.rates for se in args.seeds]
    t0 = time.time()
    for i, (sc, st, me, ra, se) in enumerate(cells):
        band = f"{args.band[0]:g}-{args.band[1]:g}" if args.band else "default"
        key = (sc, st, me, str(ra), str(args.strength or "default"), band, str(args.steps or "default"), str(se))
        if key in done:
            print(f"[{i + 1}/{len(cells)}] {key}: done already", flush=True)
            continue
        row = run_cell(args, args.work, data, sc, st, me, ra, se)
        append_row(args.out, row)
        el = time.time() - t0
        print(f"[{i + 1}/{len(cells)}] {sc} {st} {me} rate {ra:g}: z {row['z']:.2f} (p {row['p']:.1e}), paired z "
              f"{row['z_paired']:.2f} (p {row['p_paired']:.1e}), ref z {row['z_reference']:.2f}; "
              f"finetune {row['finetune_s']} s; elapsed {el / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
