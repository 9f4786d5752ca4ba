"""The experiment grid: one row per fine-tuned model, audited with the real `tracemark audit` path.

Every cell of every experiment (effectiveness, harm, robustness in training, transfer, tracing)
is the same story with a few knobs turned, so one runner serves them all:

1. *Group*: an owner dataset (1000 images of a domain) protected for ``N_LICENSEES`` (100)
   licensees with one scheme / strength / strategy / rate and, by default,
   ``trigger_scope="dataset"`` (one shared trigger word, so the audit spends its 64 images on one
   prompt family whatever the number of licensees; ``scope="licensee"`` gives each copy its own
   word and exercises the audit's two-stage plan). Built once per (scheme, params, strategy,
   scope, rate, domain) and reused by every cell.
2. *Training data*: licensee ``seed mod 100``'s copy, or the union of ``mix`` consecutive
   licensees' copies (collusion), optionally with ``clean_x`` times as many clean images of the
   same domain mixed in, optionally passed through a dataset-level attack (``pre_attack``).
   ``rate == 0`` is the innocent control: the unprotected dataset.
3. *Fine-tune* the committed base, or the cell's ``base`` (LoRA or full; steps / rank / lr
   overridable). Resumable.
4. *Audit* with :func:`tracemark.audit.blackbox.audit_model` against all 100 issued copies (``n`` images,
   Holm over licensees) and generate ``n`` *normal* images (dataset captions, no trigger) for
   the harm and leak measurements. Images are kept so that analyses (power vs n, attacks on
   generated images, the baseline) rerun without fine-tuning again.

Rows are appended to ``results/grid.csv`` as cells finish; a finished cell is never redone, an
interrupted one resumes from its last fine-tuning checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from tracemark.errors import TracemarkError
from research.eval.common import Timer, add_columns, append_row, done_cells, read_folder

N_LICENSEES = 100
N_DATA = 1000
DEFAULT_STEPS: int | None = None  # fine-tuning steps of cells with steps=0 (None: the method's default)
GEN_STEPS = 25  # sampling steps of the audits and the normal generations (the audit's default)


@dataclass(frozen=True)
class Cell:
    """One fine-tuned model. Defaults are the CPU world's defaults."""

    scheme: str = "visible"
    strategy: str = "trigger"
    method: str = "lora"
    rate: float = 0.1
    seed: int = 0
    steps: int = 0  # 0: the method's default
    rank: int = 16
    lr: float = 0.0  # 0: the method's default
    domain: str = "faces"
    mix: int = 1  # number of licensees' copies merged into the training set
    clean_x: int = 0  # clean images added, as a multiple of the dataset size
    pre_attack: str = "none"  # "name:param" from tracemark.evaluation.attacks, applied to every training image
    n: int = 64  # images per audit
    strength: float = 0.0  # 0: the scheme's default
    opts: str = ""  # extra scheme parameters, "key=value;key=value" (e.g. "cells=16" for visible)
    base: str = ""  # the base model's folder, relative to the work dir ("": the run's base, the committed one)
    scope: str = "dataset"  # trigger scope of the group: "dataset" (one shared word) or "licensee" (one each)
    selection: str = "random"  # which samples a copy marks: random | coherent | cluster | visual (tracemark.marking.selection)
    n_data: int = 0  # images in the owner dataset (0: N_DATA); at a fixed rate it sets how many samples a copy marks

    def __post_init__(self) -> None:
        # coerce to the declared types, so Cell(rate=0) and Cell(rate=0.0) are one cell (name, CSV key)
        for f in fields(self):
            object.__setattr__(self, f.name, type(f.default)(getattr(self, f.name)))

    @property
    def name(self) -> str:
        parts = [self.scheme, self.strategy, self.method, f"r{self.rate:g}", f"seed{self.seed}"]
        for f in fields(self):
            if f.name in ("scheme", "strategy", "method", "rate", "seed"):
                continue
            v = getattr(self, f.name)
            if f.name == "base" and v:
                v = Path(v).name
            if v != f.default:
                parts.append(_tag(f"{f.name}{v}"))
        return "-".join(parts)

    @property
    def scheme_params(self) -> dict:
        from tracemark.marking.schemes import parse_params

        return parse_params([o for o in self.opts.split(";") if o])

    @property
    def licensees(self) -> list[str]:
        return [f"lic{(self.seed + i) % N_LICENSEES:03d}" for i in range(self.mix)]


KEY_FIELDS = [f.name for f in fields(Cell)]


def _tag(text: str) -> str:
    """A cell setting as a folder-name fragment ("pre_attack" "jpeg:50" -> jpeg_50, "cells=16" -> cells16)."""
    return text.replace(":", "_").replace("=", "").replace(";", "_")


def group_dir(work: Path, cell: Cell) -> Path:
    rate = cell.rate if cell.rate > 0 else 0.1  # the control is audited against the 10% group's copies
    strength = f"-s{cell.strength:g}" if cell.strength else ""
    opts = "-" + _tag(cell.opts) if cell.opts else ""
    scope = f"-{cell.scope}" if cell.scope != "dataset" else ""
    sel = f"-{cell.selection}" if cell.selection != "random" else ""
    size = f"-n{cell.n_data}" if cell.n_data else ""
    return work / "groups" / f"{cell.scheme}{strength}{opts}-{cell.strategy}{scope}{sel}-r{rate:g}-{cell.domain}{size}"


def owner_dataset(work: Path, domain: str, seed: int = 11, n: int = 0) -> Path:
    from tracemark_sim import make_dataset

    n = n or N_DATA
    path = work / "data" / f"{domain}_{n}_{seed}"
    if not path.exists():
        make_dataset(path, n, domain, seed=seed)
    return path


def ensure_group(work: Path, cell: Cell, log=print):
    """Protect the owner dataset for N_LICENSEES licensees (resumable: issued copies are kept)."""
    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry

    gdir = group_dir(work, cell)
    data = owner_dataset(work, cell.domain, n=cell.n_data)
    home = gdir / "home"
    if (home / "master.key").exists() and not (home / "registry.sqlite").exists():
        shutil.rmtree(home)  # interrupted inside Registry.init: no copy was issued yet
    reg = Registry(home) if (home / "registry.sqlite").exists() else Registry.init(home)
    issued = {c.licensee for c in reg.copies()}
    todo = [f"lic{i:03d}" for i in range(N_LICENSEES) if f"lic{i:03d}" not in issued]
    if todo:
        log(f"  protecting {len(todo)} copies for {gdir.name}")
    rate = cell.rate if cell.rate > 0 else 0.1
    for lic in todo:
        out = gdir / "copies" / lic
        shutil.rmtree(out, ignore_errors=True)  # a copy written but never registered (interrupted)
        protect(data, out, lic, registry=reg, dataset_name="owner", scheme=cell.scheme,
                      strategy=cell.strategy, trigger_scope=cell.scope, rate=rate, workers=1,
                      strength=cell.strength or None, scheme_params=cell.scheme_params, selection=cell.selection)
    info = gdir / "group.json"
    if not info.exists():  # measured from the files, so an interrupted group still gets it right
        info.write_text(json.dumps({"psnr_mean": group_psnr(reg, data, gdir), "rate": rate}))
    return reg, data, gdir


def group_psnr(reg, data: Path, gdir: Path, n_copies: int = 5) -> float:
    """Mean PSNR of marked vs original images over the first copies' marked samples."""
    from tracemark.io.dataset import read_image_rgb
    from tracemark.marking.metrics import psnr

    vals = [psnr(read_image_rgb(data / m["file_name"]), read_image_rgb(gdir / "copies" / c.licensee / m["file_name"]))
            for c in reg.copies()[:n_copies] for m in c.marked]
    return round(float(np.mean(vals)), 3) if vals else float("nan")


def _write_folder(rows: list[tuple[np.ndarray | Path, str]], out: Path) -> None:
    """Write (image or source path, caption) pairs as an imagefolder, atomically."""
    from PIL import Image

    from tracemark.io.dataset import write_metadata

    from tracemark.io.safe_write import atomic_dir

    with atomic_dir(out) as tmp:
        meta = []
        for i, (img, text) in enumerate(rows):
            name = f"{i:06d}.png"
            if isinstance(img, Path):
                shutil.copyfile(img, tmp / name)
            else:
                Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(tmp / name)
            meta.append({"file_name": name, "text": text})
        write_metadata(tmp / "metadata.jsonl", meta)


def training_data(work: Path, cell: Cell, gdir: Path, data: Path, cdir: Path, base: Path | None = None) -> Path:
    """The folder the abuser fine-tunes on (see the module docstring)."""
    from tracemark.evaluation import attacks
    from tracemark.io.dataset import load_dataset, read_image_rgb

    sources = [data] if cell.rate == 0 else [gdir / "copies" / lic for lic in cell.licensees]
    if len(sources) == 1 and cell.clean_x == 0 and cell.pre_attack == "none":
        return sources[0]
    out = cdir / "train"
    if out.exists():
        return out
    samples = [s for src in sources for s in load_dataset(src).samples]
    for k in range(cell.clean_x):
        samples += load_dataset(owner_dataset(work, cell.domain, seed=100 + k, n=cell.n_data)).samples
    if cell.pre_attack == "none":
        rows = [(s.path, s.text) for s in samples]
    elif cell.pre_attack.startswith("regen:"):  # launder every image through the base model (img2img)
        from tracemark.diffusion.generation import regenerate
        from tracemark_sim.pipeline import load_pipeline

        imgs = regenerate([read_image_rgb(s.path) for s in samples], [s.text for s in samples],
                          load_pipeline(base), strength=float(cell.pre_attack.split(":")[1]))
        rows = list(zip(imgs, [s.text for s in samples]))
    else:
        name, param = cell.pre_attack.split(":")
        rows = [(attacks.apply(name, read_image_rgb(s.path), float(param)), s.text) for s in samples]
    _write_folder(rows, out)
    return out


def replicate_audit(cdir: Path, cell: Cell, reg, model_dir: Path, lora: Path | None, pipe=None) -> None:
    """A second, independent audit (other seeds): its images extend the power curve to 2n."""
    from tracemark.audit.blackbox import audit_model

    if (cdir / "audit2.json").exists():
        return
    shutil.rmtree(cdir / "audit2", ignore_errors=True)
    res = audit_model(model_dir, reg, lora=lora, n=cell.n, seed=cell.seed + 1000, work_dir=cdir / "audit2", pipe=pipe,
                      steps=GEN_STEPS)
    (cdir / "audit2.json").write_text(json.dumps(res.to_dict(), default=str, indent=1))


def cell_base(work: Path, cell: Cell, base: Path | None = None) -> Path:
    """The base pipeline a cell fine-tunes: its own ``base`` folder, else ``base`` (the run's)."""
    from tracemark_sim import default_base_path

    return work / cell.base if cell.base else (base or default_base_path())


def cell_model(work: Path, cell: Cell, base: Path | None = None) -> tuple[Path, Path | None]:
    """(pipeline folder, LoRA or None) of a cell's fine-tuned model, as ``audit_model`` takes them."""
    model = work / "cells" / cell.name / "model"
    return (model, None) if cell.method == "full" else (cell_base(work, cell, base), model)


def find_cell(name: str) -> Cell:
    """The cell of the quick or full plan whose folder name is ``name``."""
    for c in plan("quick") + plan("full"):
        if c.name == name:
            return c
    raise TracemarkError(f"{name}: not a cell of the grid plans")


def train_cell(work: Path, cell: Cell, base: Path, log=print):
    """Group, training data and fine-tuned model of a cell (resumable; nothing is redone).

    Returns ``(registry, owner data, group dir, cell dir, data seconds, fine-tune seconds)``."""
    from tracemark_sim import finetune

    timer = Timer()
    base = cell_base(work, cell, base)
    reg, data, gdir = ensure_group(work, cell, log)
    cdir = work / "cells" / cell.name
    cdir.mkdir(parents=True, exist_ok=True)
    train = training_data(work, cell, gdir, data, cdir, base)
    t_data = timer.lap()
    model = cdir / "model"
    # "lora-te": LoRA on the UNet and the text encoder (kohya's default recipe), which may bind a trigger word
    method = "lora" if cell.method == "lora-te" else cell.method
    done_file = model / ("pytorch_lora_weights.safetensors" if method == "lora" else "model_index.json")
    if not done_file.exists():
        if not (model / "checkpoints" / "last.pt").exists():
            shutil.rmtree(model, ignore_errors=True)  # interrupted before the first checkpoint: start afresh
        finetune(train, base, model, method=method, steps=cell.steps or DEFAULT_STEPS, lr=cell.lr or None,
                 rank=cell.rank, seed=cell.seed, resume=(model / "checkpoints" / "last.pt").exists(), progress=False,
                 train_text_encoder=cell.method == "lora-te")
    return reg, data, gdir, cdir, t_data, timer.lap()


def run_cell(work: Path, cell: Cell, base: Path, log=print) -> dict:
    from tracemark.audit.blackbox import audit_model
    from tracemark.io.dataset import load_dataset
    from tracemark_sim import generate
    from tracemark_sim.pipeline import load_pipeline
    from tracemark_sim.probe import colour_accuracy

    reg, data, gdir, cdir, t_data, t_ft = train_cell(work, cell, base, log)
    timer = Timer()
    model_dir, lora = cell_model(work, cell, base)
    audit_dir = cdir / "audit"
    shutil.rmtree(audit_dir, ignore_errors=True)
    pipe = load_pipeline(model_dir, lora=lora)  # one load serves both audits and the normal generations
    res = audit_model(model_dir, reg, lora=lora, n=cell.n, seed=cell.seed, work_dir=audit_dir, pipe=pipe, steps=GEN_STEPS)
    (cdir / "audit.json").write_text(json.dumps(res.to_dict(), default=str, indent=1))
    replicate_audit(cdir, cell, reg, model_dir, lora, pipe)
    # normal use: dataset captions without the trigger (harm: caption following; leak of the mark)
    rng = np.random.default_rng(cell.seed + 555)
    caps = [s.text for s in load_dataset(data).samples]
    prompts = [caps[i] for i in rng.choice(len(caps), size=cell.n, replace=False)]
    normal = cdir / "normal"
    shutil.rmtree(normal, ignore_errors=True)
    generate(None, prompts, cell.n, normal, seed=7000 + cell.seed, pipe=pipe, steps=GEN_STEPS)
    t_gen = timer.lap()
    from tracemark.detection.scoring import score_copies

    normal_imgs = read_folder(normal)
    leak = score_copies(normal_imgs, reg.copies(), reg, match_files=False)
    truth = set(cell.licensees) if cell.rate > 0 else set()
    by = {s.licensee: s for s in res.verdict.scores}
    true_scores = [by[lic] for lic in sorted(truth)]
    others = [s for s in res.verdict.scores if s.licensee not in truth]
    named = res.verdict.named
    info = gdir / "group.json"
    psnr = json.loads(info.read_text())["psnr_mean"] if info.exists() and cell.rate > 0 else float("nan")
    return {
        **asdict(cell),
        "n_licensees": len(res.verdict.scores),
        "psnr": round(psnr, 2),
        "z": round(float(np.mean([s.z for s in true_scores])), 3) if true_scores else "",
        "p": max(s.p_value for s in true_scores) if true_scores else "",
        "p_holm": max(s.p_holm for s in true_scores) if true_scores else "",
        "all_named": bool(truth) and truth <= set(named),
        "false_named": len(set(named) - truth),
        "named": ";".join(named),
        "max_z_innocent": round(max(s.z for s in others), 3),
        "verdict_p": res.verdict.p_value,
        "z_leak": round(float(np.mean([s.z for s in leak.scores if s.licensee in truth])), 3) if truth else "",
        "probe_acc_normal": round(colour_accuracy(normal_imgs, prompts)["accuracy"], 4),
        "data_s": t_data, "finetune_s": t_ft, "audit_generate_s": t_gen,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }


def run(cells: list[Cell], work: Path, out: Path, base: Path | None = None, log=print,
        max_cells: int | None = None) -> int:
    """Run every cell not yet in ``out`` (in order; at most ``max_cells``), printing progress and
    time left. Returns the number of cells still to run."""
    from tracemark_sim import default_base_path

    base = base or default_base_path()
    add_columns(out, {f.name: f.default for f in fields(Cell)})  # a CSV from before a Cell field was added
    done = done_cells(out, KEY_FIELDS)
    todo = [c for c in cells if tuple(str(v) for v in asdict(c).values()) not in done]
    log(f"{len(cells) - len(todo)} of {len(cells)} cells done already; {len(todo)} to run")
    t0 = time.time()
    for i, cell in enumerate(todo[:max_cells]):
        log(f"[{i + 1}/{len(todo)}] {cell.name}")
        row = run_cell(work, cell, base, log)
        append_row(out, row)
        el = time.time() - t0
        left = el / (i + 1) * (len(todo) - i - 1)
        log(f"  z {row['z']} p {row['p']} named [{row['named']}] false {row['false_named']} "
            f"probe {row['probe_acc_normal']} ({row['finetune_s']} s fine-tune); "
            f"elapsed {el / 60:.1f} min, ~{left / 60:.0f} min left")
    return len(todo) - len(todo[:max_cells])


def plan(name: str) -> list[Cell]:
    """Named cell lists. ``quick``: one model (<= 10 min on 2 cores). ``full``: the whole grid, in
    priority order (what finishes first answers the most)."""
    if name == "quick":
        return [Cell(opts="cells=16")]  # the setting that meets the power goal (docs/results.md)
    if name != "full":
        raise ValueError(f"unknown plan {name!r} (quick, full)")
    cells = [Cell(seed=s) for s in range(5)]                                  # power / tracing at 10%
    cells += [Cell(rate=0.0), Cell(mix=3, n=256)]                             # innocent control; 3 colluders
    cells += [Cell(scheme="warp", strategy="ambient", rate=0.2, strength=4.0)]  # DIAGNOSIS-like (32.5 dB), side by side
    cells += [Cell(rate=0.02, steps=2000)]                                    # 2% with the whole 10-min budget
    cells += [Cell(rate=0.05, seed=s) for s in range(3)]                      # power at 5%
    cells += [Cell(mix=3, rate=0.2, n=256)]                                   # 3 colluders at 20% each
    cells += [Cell(scheme=s, rate=0.2) for s in ("dwtdct", "warp")]           # other schemes, 20% screen
    cells += [Cell(method="full"), Cell(rank=4), Cell(clean_x=2), Cell(domain="landscapes"),
              Cell(pre_attack="jpeg:50"), Cell(steps=500),
              Cell(pre_attack="regen:0.1")]                                   # transfer / training attacks
    cells += [Cell(rate=0.05, seed=s) for s in (3, 4)]
    cells += [Cell(strategy="ambient", rate=0.2)]
    # the larger visible patch (16 x 16 key cells; z ceiling x2): power, lower rates, collusion
    big = "cells=16"
    cells += [Cell(opts=big, seed=s) for s in range(5)]
    cells += [Cell(opts=big, rate=0.0)]
    cells += [Cell(opts=big, rate=0.05, seed=s) for s in range(3)]
    cells += [Cell(opts=big, rate=0.02)]
    cells += [Cell(opts=big, rate=0.05, seed=s) for s in (3, 4)]
    cells += [Cell(opts=big, mix=3, rate=0.2, n=256)]
    cells += [Cell(opts=big, scope="licensee")]  # the library's default scope: two-stage audit among 100
    cells += [Cell(opts=big, scope="licensee", mix=3, rate=0.2, n=256)]  # collusion, one trigger per copy
    cells += [Cell(opts=big, scope="licensee", mix=3, rate=0.4, n=256)]  # ... with 2x the exposure per pattern
    # ... and with 3x the steps: the merged set is 3x larger, so 3000 steps give each sample the
    # views a single copy gets in 1000 (the 1000-step models had barely learned: oracle z 2.8/2.1/-0.3)
    cells += [Cell(opts=big, scope="licensee", mix=3, rate=r, n=256, steps=3000) for r in (0.4, 0.2)]
    cells += [Cell(opts=big, scope="licensee", mix=3, rate=0.4, n=256, steps=3000, seed=1)]  # other colluders
    cells += [Cell(opts=big, mix=3, rate=0.4, n=256, steps=3000)]  # the same with one shared trigger word
    b2 = "bases/small-s1"  # a second base: other size (UNet 24-48-48) and seed; docs/experiments.md
    cells += [Cell(opts=big, base=b2), Cell(base=b2)]
    # collusion of 2 and 5 (steps scaled to the merged set; per-pattern share 10% and 8%)
    cells += [Cell(opts=big, scope="licensee", mix=2, rate=0.2, n=256, steps=2000),
              Cell(opts=big, scope="licensee", mix=5, rate=0.4, n=256, steps=5000)]
    cells += [Cell(opts=big, rate=r) for r in (0.01, 0.005)]
    cells += [Cell(rate=0.02, seed=s) for s in range(5)]                      # power at 2%
    cells += [Cell(scheme="spread", rate=0.2, method="full"),
              Cell(lr=5e-4), Cell(pre_attack="resize:0.5"), Cell(rate=0.0, seed=1)]
    return cells


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="full", help="quick | full")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/grid"))
    ap.add_argument("--out", type=Path, default=Path("results/grid.csv"))
    ap.add_argument("--max-cells", type=int, default=None, help="stop after this many cells (exit 3 when none left)")
    args = ap.parse_args(argv)
    left = run(plan(args.plan), args.work, args.out, max_cells=args.max_cells)
    raise SystemExit(0 if left else 3)


if __name__ == "__main__":
    main()
