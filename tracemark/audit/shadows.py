"""The owner's shadows: fine-tunes of the public base on the clean original dataset.

The white-box audit's loss statistic compares a suspect model with a *reference* that learned the
same data without the mark; a LoRA the owner trains on the clean original with the same recipe an
abuser's ``tracemark finetune`` uses is that reference (docs/research/learnability_log.md: the audit against
such a shadow is what detects a LoRA fine-tune; averaging several raises z, each costs one
fine-tune). :func:`train_shadows` trains K of them (seeds 1..K, distinct from ``finetune``'s
default seed 0) with the product trainer, stores each under
``$TRACEMARK_HOME/shadows/<dataset>/<base fingerprint>/seed-<k>/`` with its recipe and weights
digest, and registers it per (dataset, base): :meth:`tracemark.registry.database.Registry.shadows` finds
them by :func:`base_fingerprint`.

Resumable: a shadow is recorded as training before its fine-tune starts, the trainer checkpoints
(every tenth of the run, and on Ctrl-C / SIGTERM), and a rerun resumes an interrupted shadow
where it stopped and skips the ready ones.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.registry.database import SHADOW_WEIGHTS, Registry, Shadow

__all__ = ["DEFAULT_COUNT", "Shadow", "base_fingerprint", "model_hash", "shadow_root", "train_shadows"]

#: Shadows per (dataset, base) by default: two fine-tunes of the owner's budget (docs/research/learnability_log.md:
#: averaging four lifted the 2% mean z from 2.63 to 3.28; each one is a full fine-tune).
DEFAULT_COUNT = 2
SHADOWS_DIR = "shadows"
RECIPE_FILE = "recipe.json"


def model_hash(model_dir: Path, lora: Path | None = None, registry: Registry | None = None) -> str:
    """SHA-256 over (name, SHA-256) of the model's weight and config files (a pipeline folder or a
    single-file checkpoint) and of the LoRA; with a ``registry``, each file's digest is computed once
    per (path, size, mtime) and then read from the registry."""
    from tracemark.io.dataset import file_sha256

    model_dir = Path(model_dir)
    files = [model_dir] if model_dir.is_file() else sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt",
                                                                          ".pt", ".ckpt"))
    if lora is not None:
        lora = Path(lora)
        files += sorted(p for p in lora.rglob("*.safetensors")) if lora.is_dir() else [lora]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + (registry.file_digest(p) if registry else file_sha256(p)).encode())
    return h.hexdigest()


def base_fingerprint(base: Path, registry: Registry | None = None) -> str:
    """The base model's identity: SHA-256 over (name, SHA-256) of its weight and config files
    (:func:`model_hash` without a LoRA), so a copy of the same model elsewhere matches. With
    ``registry``, each file is read once per (path, size, mtime)."""
    base = Path(base)
    if not base.exists():
        raise TracemarkError(f"{base}: model folder not found")
    return model_hash(base, None, registry)


def shadow_root(registry: Registry, dataset: str, base_hash: str) -> Path:
    """Folder of the shadows of ``dataset`` on the base of fingerprint ``base_hash``."""
    return registry.home / SHADOWS_DIR / dataset / base_hash


def registered_dataset(registry: Registry, data_dir: Path, dataset_name: str | None = None,
                       columns: tuple[str | None, str | None] = (None, None)) -> tuple[str, str]:
    """(name, content hash) of the registered dataset whose clean original is ``data_dir``, identified as
    ``protect`` names it (the folder's name or ``dataset_name``); refuses any other folder. ``columns``
    (caption, image): as given, else as recorded with the dataset's copies."""
    from tracemark.io.dataset import content_hash, load_dataset

    data_dir = Path(data_dir)
    name = dataset_name or data_dir.resolve().name
    rows = {r["name"]: r for r in registry.datasets()}
    if name not in rows:
        raise TracemarkError(f"{data_dir}: not a registered dataset (no dataset '{name}' in {registry.db_path}); "
                             "shadows are trained on an original you have protected (or pass dataset_name)",
                             params=("dataset_name",))
    columns = recorded_columns(registry, name, columns)
    chash = content_hash(load_dataset(data_dir, *columns))
    if chash != rows[name]["content_hash"]:
        raise TracemarkError(f"{data_dir}: its content differs from the registered dataset '{name}' (shadows are "
                             "trained on the clean original exactly as protected, not on a copy or an edit)")
    return name, chash


def recorded_columns(registry: Registry, name: str, given: tuple[str | None, str | None]) -> tuple[str | None, ...]:
    """(caption, image) columns: those ``given``, else those recorded with a copy of dataset ``name``."""
    copies = registry.copies(name, with_marked=False)
    params = copies[0].params if copies else {}
    return tuple(g if g is not None else params.get(k) for g, k in zip(given, ("caption_column", "image_column")))


def _recipe_key(recipe: dict) -> dict:
    """The part of a recipe that changes the weights (not versions, paths or timings)."""
    return {k: recipe.get(k) for k in ("method", "preset", "steps", "hyperparameters", "dataset_hash")}


def _save_every(steps: int, preset_every: int) -> int:
    """Checkpoint every tenth of the run (at most the preset's interval): a killed shadow loses little."""
    return max(1, min(preset_every, math.ceil(steps / 10)))


def _lock(root: Path):
    """An exclusive lock on this (dataset, base)'s shadows: two runs must not train one folder."""
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise TracemarkError(f"{root}: another `tracemark shadow` is training these shadows; wait for it to "
                             "finish") from None
    return fh


def train_shadows(registry: Registry, data_dir: Path, base: Path | None, count: int = DEFAULT_COUNT,
                  preset: str = "auto", steps: int | None = None, progress: bool = True, *,
                  dataset_name: str | None = None, say: Callable[[str], None] | None = None,
                  caption_column: str | None = None, image_column: str | None = None) -> list[Shadow]:
    """Fine-tune shadows 1..``count`` of ``base`` on the registered original ``data_dir`` (LoRA, the
    ``preset``'s recipe, ``steps`` or the preset's), skipping the ready ones and resuming an
    interrupted one; returns the ``count`` shadows, ready. ``base=None``: the installed default base
    model (:func:`tracemark.plugins.default_base`, the CPU test world's), with a notice. ``say``: one
    line per shadow."""
    from tracemark.io.dataset import file_sha256
    from tracemark.io.safe_write import write_text_atomic

    say = say or (lambda _line: None)
    data_dir = Path(data_dir)
    if count < 1:
        raise TracemarkError(f"count must be at least 1, got {count}", params=("count",))
    if steps is not None and steps <= 0:
        raise TracemarkError(f"steps must be positive, got {steps}", params=("steps",))
    if base is not None and not Path(base).exists():
        raise TracemarkError(f"{base}: model folder not found")
    name, chash = registered_dataset(registry, data_dir, dataset_name, (caption_column, image_column))  # (before torch)
    caption_column, image_column = recorded_columns(registry, name, (caption_column, image_column))
    from tracemark.diffusion.training import CHECKPOINT, base_or_default, finetune, preset_for_base

    base = base_or_default(base, say)

    pre = preset_for_base(base, preset)
    n_steps = steps if steps is not None else pre.steps
    fp = base_fingerprint(base, registry)
    hyper = {k: v for k, v in asdict(pre).items() if k not in ("name", "steps", "full_steps", "full_lr", "save_every")}
    recipe = {"method": "lora", "preset": pre.name, "steps": n_steps, "hyperparameters": hyper, "dataset": name,
              "dataset_hash": chash, "base_hash": fp, "trainer": "tracemark.diffusion.training.finetune"}
    recipe = json.loads(json.dumps(recipe))  # as the registry gives it back (tuples become lists)
    root = shadow_root(registry, name, fp)
    lock = _lock(root)
    try:
        done: list[Shadow] = []
        for k in range(1, count + 1):
            runs = {s.seed: s for s in registry.shadow_runs(name, fp)}
            ready = {s.seed: s for s in registry.shadows(name, fp)}
            out = root / f"seed-{k}"
            prev = runs.get(k)
            if k in ready:
                if _recipe_key(ready[k].recipe) != _recipe_key(recipe):
                    r = ready[k].recipe
                    raise TracemarkError(f"{out}: shadow {k} of '{name}' on this base was trained with another recipe "
                                         f"(preset {r.get('preset')}, {r.get('steps')} steps); ask for the same, or "
                                         "delete that folder to train it again")
                say(f"shadow {k}/{count}: ready ({out})")
                done.append(ready[k])
                continue
            resume = (prev is not None and prev.status == "training" and Path(prev.path) == out
                      and _recipe_key(prev.recipe) == _recipe_key(recipe) and (out / CHECKPOINT).is_file())
            if not resume and out.exists():  # our own folder: a run killed before its first checkpoint,
                shutil.rmtree(out)           # another recipe's, or a ready one whose weights were lost
            if resume:
                say(f"shadow {k}/{count}: resuming the interrupted fine-tune in {out}")
            else:
                say(f"shadow {k}/{count}: fine-tuning seed {k} ({pre.name}, {n_steps} steps) into {out}")
            sid = registry.add_shadow(dataset=name, base_path=str(base.resolve()), base_hash=fp, preset=pre.name,
                                      seed=k, path=str(out), recipe=recipe)
            try:
                finetune(data_dir, base, out, method="lora", preset=pre, steps=n_steps, seed=k, resume=resume,
                         save_every=_save_every(n_steps, pre.save_every), progress=progress,
                         caption_column=caption_column, image_column=image_column)
            except KeyboardInterrupt:
                say(f"shadow {k}/{count}: interrupted; the same command again resumes it from its last checkpoint")
                raise
            digest = file_sha256(out / SHADOW_WEIGHTS)
            write_text_atomic(out / RECIPE_FILE, json.dumps({**recipe, "seed": k, "sha256": digest}, indent=2) + "\n")
            registry.finish_shadow(sid, digest)
            shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)  # optimizer state: not needed once ready
            done.append(next(s for s in registry.shadow_runs(name, fp) if s.seed == k))
        return done
    finally:
        lock.close()
