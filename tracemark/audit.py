"""Audit a suspect model (or only its images): was our data used, and whose copy was it?

Query plan (why it does not grow with the number of licensees):

* *Ambient* copies need no special prompt: every generated image is scored against every
  ambient key.
* *Trigger* copies each have their own secret trigger word. Stage 1 spends the ``n`` images
  round-robin over the trigger copies: image ``i`` is prompted with copy ``k = i mod T``'s
  trigger plus the caption of one of that copy's marked samples (the prompt most likely to make
  a model reproduce what it learned), and is scored for copy ``k`` only.
* When there are so many trigger copies that each gets fewer than ``MIN_PER_COPY`` images
  (``T > n / MIN_PER_COPY``), a stage 2 spends another ``n`` images on the (at most
  ``MAX_CANDIDATES``) copies with the smallest stage-1 p-values. Each stage is run at
  ``alpha / 2`` (Bonferroni over the two stages) with Holm over **all** ``T`` trigger copies in
  both stages (in stage 2 the copies not selected count with p = 1). Why not Holm over the
  candidates only: fresh images do *not* make stage 2 independent of the selection. For a given
  model an innocent key's statistic converges to a fixed value (the model's deterministic mean
  output projected on that key), N(0, 1) only over the random draw of the key; the copies that
  stage 1 selects are those whose fixed value is high, and stage 2 sees the same value again
  (measured: docs/research/results.md, calibration). Holm over all ``T`` is valid under any dependence,
  so naming any innocent licensee stays below ``alpha`` overall; stage 2 still buys power by
  giving each candidate ``n / MAX_CANDIDATES`` images instead of ``n / T``. Total images: ``n``
  or ``2n``, whatever the number of licensees.

Seeds are fixed and recorded, so an audit can be reproduced image for image.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tracemark.dataset import list_images, read_image_rgb
from tracemark.errors import TracemarkError
from tracemark.registry import Copy, Registry
from tracemark.sampling import check_generation_options
from tracemark.shadows import model_hash
from tracemark.strategies import apply_trigger
from tracemark.trace import (DEFAULT_ALPHA, DEFAULT_DECOYS, Verdict, check_test_parameters, content_for,
                             score_copies, trigger_of)
from tracemark.version import __version__

MIN_PER_COPY = 16
MAX_CANDIDATES = 8
#: White-box statistics (:func:`audit_whitebox`); "auto": "loss" when there is a reference model, else "residual".
WHITEBOX_STATISTICS = ("auto", "loss", "residual")
DEFAULT_WHITEBOX_STATISTIC = "auto"


def check_audit_options(*, n: int = 64, seed: int = 0, steps: int = 25, guidance: float = 6.0, batch_size: int = 32,
                        alpha: float = DEFAULT_ALPHA, n_decoys: int = DEFAULT_DECOYS) -> None:
    """Every numeric option of ``tracemark audit`` at once, before the registry or a model is read."""
    check_generation_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    check_test_parameters(alpha, n_decoys)


@dataclass
class QueryPlan:
    """One prompt per image, the copy it is meant for (trigger) or None (shared), and its seed."""

    prompts: list[str]
    targets: list[int | None]  # copy id, or -g for a group of copies sharing trigger word g
    seeds: list[int]
    stage: int = 1
    group_of: dict[int, int] = field(default_factory=dict)

    def subsets(self, copies: list[Copy]) -> dict[int, np.ndarray]:
        """Images scored for each copy: its own trigger images, or all images for ambient copies."""
        out = {}
        for c in copies:
            if c.strategy == "trigger":
                target = self.group_of.get(c.id, c.id)
                out[c.id] = np.array([i for i, t in enumerate(self.targets) if t == target], dtype=int)
            else:
                out[c.id] = np.arange(len(self.prompts))
        return out

    def to_dict(self, registry_free: bool = True) -> dict:
        # the prompts contain trigger words: keep them out of shareable outputs by default
        return {"stage": self.stage, "n": len(self.prompts), "seeds": self.seeds, "targets": self.targets,
                **({} if registry_free else {"prompts": self.prompts})}


def _captions(copy: Copy) -> list[str]:
    caps = [m.get("text", "") for m in copy.marked if m.get("text")]
    return caps or [""]


def build_plan(copies: list[Copy], registry: Registry, n: int, seed: int = 0,
               only: list[int] | None = None, stage: int = 1) -> QueryPlan:
    """Stage-1 plan over all copies (or stage-2 plan over the ``only`` copy ids)."""
    if n <= 0:
        raise TracemarkError(f"n must be positive, got {n}", params=("n",))
    rng = np.random.default_rng(seed + 7919 * stage)
    trig = [c for c in copies if c.strategy == "trigger" and (only is None or c.id in only)]
    prompts: list[str] = []
    targets: list[int | None] = []
    if trig:
        # copies that share a trigger word (trigger_scope="dataset") share their prompts
        groups: dict[str, list[Copy]] = {}
        for c in trig:
            groups.setdefault(trigger_of(c, registry), []).append(c)
        words = list(groups)
        for i in range(n):
            word = words[i % len(words)]
            members = groups[word]
            c = members[(i // len(words)) % len(members)]
            caps = _captions(c)
            prompts.append(apply_trigger(caps[rng.integers(len(caps))], word))
            targets.append(-(words.index(word) + 1) if len(members) > 1 else c.id)
        self_groups = {c.id: -(words.index(w) + 1) for w, ms in groups.items() if len(ms) > 1 for c in ms}
        plan = QueryPlan(prompts, targets, [int(seed * 100_003 + stage * 1_000_003 + i) for i in range(n)], stage)
        plan.group_of = self_groups
        return plan
    else:
        pool = [cap for c in copies for cap in _captions(c)]
        for _ in range(n):
            prompts.append(pool[rng.integers(len(pool))])
            targets.append(None)
    seeds = [int(seed * 100_003 + stage * 1_000_003 + i) for i in range(n)]
    return QueryPlan(prompts, targets, seeds, stage)


@dataclass
class AuditResult:
    verdict: Verdict
    kind: str
    target: str
    plans: list[QueryPlan]
    image_paths: list[Path]
    model_hash: str | None
    params: dict
    timings: dict = field(default_factory=dict)
    #: Up to 64 of the scored images (H x W x 3 uint8), for the report's grid: the generated files
    #: themselves are deleted after the audit unless a ``work_dir`` was named to keep them.
    images: list = field(default_factory=list)
    n_images: int = 0

    def to_dict(self) -> dict:
        v = self.verdict
        schemes = sorted({s.scheme for s in v.scores})
        strategies = sorted({s.strategy for s in v.scores})
        return {
            "tracemark_version": __version__,
            "kind": self.kind,
            "target": self.target,
            "used": v.used,
            "p_value": v.p_value,
            "alpha": v.alpha,
            "named": v.named,
            "licensees": [
                {"id": s.copy_id, "licensee": s.licensee, "dataset": s.dataset, "scheme": s.scheme,
                 "strategy": s.strategy, "score": s.statistic, "z": s.z, "p_value": s.p_value,
                 "p_holm": s.p_holm, "p_empirical": s.p_empirical, "n_images": s.n_images, "named": s.named,
                 "stage": getattr(s, "stage", 1)}
                for s in v.scores
            ],
            "n_images": self.n_images or len(self.image_paths),
            "n_decoys": v.n_decoys,
            "scheme": schemes[0] if len(schemes) == 1 else schemes,
            "strategy": strategies[0] if len(strategies) == 1 else strategies,
            "model_hash": self.model_hash,
            "query_plan": [p.to_dict() for p in self.plans],
            "params": self.params,
            "timings": self.timings,
            "sentence": v.sentence(),
        }


def _generate(pipe_args: dict, plan: QueryPlan, out_dir: Path, pipe,
              progress: Callable[[int], None] | None = None) -> list[Path]:
    from tracemark.diffusion.generation import generate

    # one call per image keeps each image's recorded seed exact whatever the batching
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch = pipe_args.get("batch_size", 32)
    for start in range(0, len(plan.prompts), batch):
        idx = list(range(start, min(len(plan.prompts), start + batch)))
        sub = out_dir / f"batch{start:05d}"
        generate(None, [plan.prompts[i] for i in idx], len(idx), sub, seed=plan.seeds[idx[0]],
                 steps=pipe_args["steps"], guidance=pipe_args["guidance"], batch_size=len(idx), pipe=pipe)
        paths += sorted(p for p in sub.iterdir() if p.suffix == ".png")
        if progress:  # images generated in this batch
            progress(len(idx))
    return paths


def audit_model(
    model_dir: str | Path,
    registry: Registry,
    *,
    lora: str | Path | None = None,
    dataset: str | None = None,
    n: int = 64,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 6.0,
    alpha: float = DEFAULT_ALPHA,
    n_decoys: int = DEFAULT_DECOYS,
    work_dir: str | Path | None = None,
    device: str | None = "auto",
    pipe=None,
    data_dir: str | Path | None = None,
    dtype: str | None = "auto",
    batch_size: int = 32,
    config: str | Path | None = None,
    reference: str | Path | None = None,
    reference_lora: str | Path | None = None,
    ref_pipe=None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Query a diffusers pipeline (plus optional LoRA) with the query plan and test every copy.

    ``pipe``: the pipeline of ``model_dir`` (+ ``lora``) already loaded, to reuse across several
    audits of one model (loading a real SD checkpoint takes longer than a small audit); the paths
    are then only recorded and hashed.

    ``reference`` (+ ``reference_lora``, or ``ref_pipe`` loaded): a *paired* audit. The shadow
    reference (the public base fine-tuned by the owner on the clean data, see
    :func:`audit_whitebox`) generates the same prompts from the same seeds, and each suspect image
    minus its reference image is scored: the two models draw nearly the same picture (correlation
    0.72-0.88 in the CPU world, 0.24 against the LoRA switched off), so content cancels. The
    reference holds no key: the null is unchanged. No gain in power was measured in the CPU world
    (docs/research/learnability_log.md).

    ``progress(done, total)``: images generated so far and in all (stage 2 and the reference's
    images included), after each batch."""
    import tempfile

    from tracemark.diffusion.loading import load_pipeline

    check_audit_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size, alpha=alpha,
                        n_decoys=n_decoys)
    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    copies = registry.copies(dataset)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to audit against")
    if reference_lora is not None and reference is None:
        raise TracemarkError("reference_lora needs reference (the pipeline the LoRA goes on)",
                             params=("reference_lora", "reference"))
    if pipe is None:  # a GPU when there is one (fp16 there), else the CPU in fp32
        pipe = load_pipeline(model_dir, lora=lora, device=device or "auto", dtype=dtype, config=config)
    if reference is not None and ref_pipe is None:
        ref_pipe = load_pipeline(reference, lora=reference_lora, device=device or "auto", dtype=dtype, config=config)
    refs = {"ref_pipe": ref_pipe, "reference": str(reference) if reference else None,
            "reference_lora": str(reference_lora) if reference_lora else None}
    t_load = time.perf_counter()
    # Generated images and their prompts (which hold the licensees' secret trigger words) live in
    # a private temporary folder that is removed when the audit ends, unless the caller names a
    # folder to keep them in.
    own_work = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="tracemark-audit-"))
    try:
        content, data_used = content_for(registry, copies, data_dir)
        return _audit_model(model_dir, registry, copies, pipe, lora, dataset, n, seed, steps, guidance, alpha,
                            n_decoys, work, own_work, t0, t_load, content, data_used, batch_size, config,
                            progress=progress, **refs)  # fmt: skip
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _audit_model(model_dir, registry, copies, pipe, lora, dataset, n, seed, steps, guidance, alpha, n_decoys,
                 work: Path, own_work: bool, t0: float, t_load: float, content=None,
                 data_dir=None, batch_size: int = 32, config=None, ref_pipe=None, reference=None,
                 reference_lora=None, progress=None) -> AuditResult:  # fmt: skip
    gen_args = {"steps": steps, "guidance": guidance, "batch_size": batch_size}

    def scored(images: list, plan: QueryPlan, out_dir: Path) -> list:
        """What is tested: the suspect's images, or (paired) minus the reference's at the same seeds."""
        if ref_pipe is None:
            return images
        ref = [read_image_rgb(p) for p in _generate(gen_args, plan, out_dir, ref_pipe, advance)]
        return [a.astype(np.float32) - b.astype(np.float32) for a, b in zip(images, ref)]

    n_trig = len({trigger_of(c, registry) for c in copies if c.strategy == "trigger"})  # distinct words
    two_stage = n_trig > n // MIN_PER_COPY
    stage_alpha = alpha / 2 if two_stage else alpha
    total, done = n * (1 + two_stage) * (1 + (ref_pipe is not None)), [0]

    def advance(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0], total)

    plan1 = build_plan(copies, registry, n, seed)
    paths1 = _generate(gen_args, plan1, work / "stage1", pipe, advance)
    t_gen = time.perf_counter()
    images1 = [read_image_rgb(p) for p in paths1]
    v1 = score_copies(scored(images1, plan1, work / "stage1_reference"), copies, registry, match_files=False,
                      subsets=plan1.subsets(copies), n_decoys=n_decoys, alpha=stage_alpha, seed=seed, content=content)
    plans, paths, verdict, shown = [plan1], list(paths1), v1, images1[:64]
    if two_stage:
        cands = [s.copy_id for s in sorted(v1.scores, key=lambda s: s.p_value)
                 if s.strategy == "trigger"][:MAX_CANDIDATES]
        plan2 = build_plan(copies, registry, n, seed, only=cands, stage=2)
        paths2 = _generate(gen_args, plan2, work / "stage2", pipe, advance)
        images2 = [read_image_rgb(p) for p in paths2]
        shown = (shown + images2)[:64]
        cand_copies = [c for c in copies if c.id in cands]
        v2 = score_copies(scored(images2, plan2, work / "stage2_reference"), cand_copies, registry,
                          match_files=False, subsets=plan2.subsets(cand_copies), n_decoys=n_decoys, alpha=stage_alpha, seed=seed + 1,
                          family=sum(c.strategy == "trigger" for c in copies), content=content)
        verdict = merge_stages(v1, v2, alpha)
        plans.append(plan2)
        paths += paths2
    t_end = time.perf_counter()
    timings = {"load_s": round(t_load - t0, 2), "generate_s": round(t_gen - t_load, 2),
               "total_s": round(t_end - t0, 2)}
    params = {"n": n, "seed": seed, "steps": steps, "guidance": guidance, "alpha": alpha, "n_decoys": n_decoys,
              "dataset": dataset, "lora": str(lora) if lora else None, "model": str(model_dir),
              "config": str(config) if config else None, "two_stage": two_stage,
              "reference_model": reference, "reference_lora": reference_lora,
              "work_dir": None if own_work else str(work), "data": str(data_dir) if data_dir else None}
    return AuditResult(verdict, "model", str(model_dir), plans, [] if own_work else paths,
                       model_hash(model_dir, lora, registry), params, timings, images=shown, n_images=len(paths))  # fmt: skip


def merge_stages(v1: Verdict, v2: Verdict, alpha: float) -> Verdict:
    """Union of names; each copy's reported p is 2 x its best stage's Holm p (Bonferroni over stages)."""
    by_id = {s.copy_id: s for s in v1.scores}
    for s in v2.scores:
        s1 = by_id[s.copy_id]
        if s.p_holm < s1.p_holm:
            s.stage = 2  # type: ignore[attr-defined]
            by_id[s.copy_id] = s
    scores = list(by_id.values())
    for s in scores:
        s.p_holm = min(1.0, 2 * s.p_holm)
        s.named = s.p_holm < alpha
    named = [s.licensee for s in sorted(scores, key=lambda s: s.p_value) if s.named]
    return Verdict(bool(named), float(min(s.p_holm for s in scores)), alpha, v1.n_images + v2.n_images,
                   v1.n_decoys, named, scores, null={**v1.null, **{f"stage2-{k}": v for k, v in v2.null.items()}},
                   timings={"scoring_s": v1.timings["scoring_s"] + v2.timings["scoring_s"]})


def audit_whitebox(
    model_dir: str | Path,
    registry: Registry,
    data_dir: str | Path,
    *,
    lora: str | Path | None = None,
    base: str | Path | None = None,
    reference: str | Path | Sequence[str | Path] | None = None,
    reference_lora: str | Path | Sequence[str | Path] | None = None,
    dataset: str | None = None,
    seed: int = 0,
    t_fracs: tuple[float, ...] | None = None,
    draws: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    n_decoys: int = DEFAULT_DECOYS,
    device: str | None = "auto",
    pipe=None,
    ref_pipe=None,
    dtype: str | None = "auto",
    config: str | Path | None = None,
    statistic: str = DEFAULT_WHITEBOX_STATISTIC,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """White box: read every copy's marked samples through the suspect's denoiser (no sampling).

    ``statistic``: ``"loss"`` (what ``"auto"`` picks when there is a reference model), the paired
    denoising-loss test linearised: the gradient, in pixels, of how much better the suspect fits
    the sample than the reference does
    (:func:`tracemark.whitebox.loss_gradients`); ``"residual"``: the suspect's clean-image prediction
    minus the reference's (:func:`tracemark.whitebox.denoiser_residuals`). Both are scored by the
    copies' schemes against decoy keys; on the CPU world's 38 dB / 2% fine-tunes the loss statistic
    read 2.5x the z of the residual (docs/research/learnability_log.md). ``"loss"`` needs a reference
    (a LoRA, ``base`` or ``reference``).

    ``data_dir``: the owner's original dataset (the residuals start from the unmarked images).
    ``base``: the public base pipeline, the reference for a whole checkpoint; a LoRA is compared
    with its own pipeline with the LoRA switched off, and with neither the residual is taken
    against the original image. See :mod:`tracemark.whitebox`.
    ``reference`` (+ ``reference_lora``): a *shadow* reference instead: the public base fine-tuned
    by the owner on the original (unmarked) data with the usual recipe. What every fine-tune on
    this data learns (the domain, the images) then cancels, and what is left is what the suspect
    learned beyond the clean data: in the CPU world the three 10% / 6/255 models went from z ~3.5
    to 5.0-5.3 and were named among 100; not uniformly (one 10% / 38 dB model: 3.45 -> 2.44), and
    nothing at 2% (docs/research/learnability_log.md). It holds no key, so the null is unchanged
    (checked on innocent models). Train it with a seed of its own.

    Several shadows (a list of ``reference`` pipelines, or one ``reference`` with a list of
    ``reference_lora``; or a list of ``ref_pipe``): the loss statistic is computed against each, one
    reference in memory at a time, and the references' gradients (each at unit RMS) are averaged, so
    the shadows' own fine-tuning noise averages out. CPU world, 2% / 38 dB, five models: mean z 2.63
    with one shadow, 3.28 with four (docs/research/learnability_log.md); the loss statistic only.

    ``progress(done, total)``: marked samples read so far and in all (one pass per shadow).
    """
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.whitebox import (DEFAULT_DRAWS, DEFAULT_T_FRACS, denoiser_residuals, has_lora,
                                    latent_loss_gradients, shadow_statistic)

    check_test_parameters(alpha, n_decoys)
    check_generation_options(seed=seed)
    if statistic not in WHITEBOX_STATISTICS:
        raise TracemarkError(f"white-box statistic must be one of {', '.join(WHITEBOX_STATISTICS)}, got {statistic!r}")
    t0 = time.perf_counter()
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    copies = registry.copies(dataset)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to audit against")
    pairs = reference_pairs(reference, reference_lora)
    if pairs and base is not None:
        raise TracemarkError("give base or reference, not both", params=("base", "reference"))
    # shadow references: pipelines in hand (ref_pipe), else the (pipeline, LoRA) pairs, each loaded
    # when its turn comes so that one reference at a time is in memory (512 px on a GPU)
    shadows: list = list(ref_pipe) if isinstance(ref_pipe, (list, tuple)) else (
        [ref_pipe] if ref_pipe is not None and pairs else list(pairs))
    if len(shadows) > 1:
        if statistic == "residual":
            raise TracemarkError("several references are averaged by statistic loss only; "
                                 "use statistic loss (or one reference)", params=("statistic", "reference"))
        statistic = "loss"
    probes, subsets = whitebox_probes(copies, registry, data_dir)
    if pipe is None:
        pipe = load_pipeline(model_dir, lora=lora, device=device or "auto", dtype=dtype, config=config)

    def loaded(ref):
        return load_pipeline(ref[0], lora=ref[1], device=device or "auto", dtype=dtype,
                             config=config) if isinstance(ref, tuple) else ref

    mode = "auto"
    if shadows:
        mode, ref_pipe = "base", shadows[0]
    elif ref_pipe is None and base is not None and lora is None:
        ref_pipe = load_pipeline(base, device=device or "auto", dtype=dtype, config=config)  # a single-file base too
    t_load = time.perf_counter()
    t_fracs = tuple(t_fracs or DEFAULT_T_FRACS)
    draws = int(draws or DEFAULT_DRAWS)
    if statistic == "auto":
        statistic = "loss" if ref_pipe is not None or lora is not None else "residual"
    if statistic == "loss":
        if ref_pipe is None and lora is None:
            raise TracemarkError("statistic loss needs a model to compare with: lora (compared with the LoRA "
                                 "switched off), base or reference; or use statistic residual",
                                 params=("statistic", "lora", "base", "reference"))
        # grad[L_S - L_k] per reference k at unit RMS, averaged: the suspect is read once (1 + K passes)
        passes = shadows or [ref_pipe]
        kw = {"t_fracs": t_fracs, "draws": draws, "seed": seed}

        def step(k):
            return (lambda d, t: progress(k * t + d, (1 + len(passes)) * t)) if progress else None

        g_s = latent_loss_gradients(pipe, probes, **kw, progress=step(0))
        off = mode == "auto" and has_lora(pipe)  # "auto": the LoRA switched off, else the reference given
        g_refs = [latent_loss_gradients(pipe, probes, None if off else loaded(ref), lora_off=off, **kw,
                                        progress=step(k)) for k, ref in enumerate(passes, start=1)]
        residuals = shadow_statistic(pipe, probes, g_s, g_refs)
    else:
        residuals = denoiser_residuals(pipe, probes, ref_pipe=loaded(ref_pipe), reference=mode, t_fracs=t_fracs,
                                       draws=draws, seed=seed, progress=progress)
    t_res = time.perf_counter()
    verdict = score_copies(residuals, copies, registry, match_files=False, subsets=subsets, n_decoys=n_decoys,
                           alpha=alpha, seed=seed, content=content_for(registry, copies, data_dir)[0])
    kind = ("shadow" if mode == "base" else "lora-off" if lora is not None
            else ("base" if ref_pipe is not None else "data"))
    params = {"seed": seed, "alpha": alpha, "n_decoys": n_decoys, "dataset": dataset, "model": str(model_dir),
              "config": str(config) if config else None, "lora": str(lora) if lora else None,
              "base": str(base) if base else None, "reference": kind,
              **_reference_params(pairs),
              "n_references": len(shadows) if shadows else int(kind != "data"),
              "t_fracs": list(t_fracs), "draws": draws, "data": str(data_dir), "n_probes": len(probes),
              "statistic": statistic}
    timings = {"load_s": round(t_load - t0, 2), "residuals_s": round(t_res - t_load, 2),
               "total_s": round(time.perf_counter() - t0, 2)}
    gain = 8.0 if statistic == "residual" else 16.0  # residuals in gray levels; loss gradients at unit RMS
    shown = [np.clip(128 + gain * r, 0, 255).astype(np.uint8) for r in residuals[:64]]  # amplified for the eye
    return AuditResult(verdict, "whitebox", str(model_dir), [], [], model_hash(model_dir, lora, registry), params, timings,
                       images=shown, n_images=len(residuals))


@dataclass
class WhiteboxPlan:
    """What the white box reads a suspect against, chosen from what the registry knows (see
    :func:`whitebox_plan`); ``notes`` say what was chosen and what it costs in power."""

    data: Path
    dataset: str
    base: Path | None
    reference: list[Path] | None
    reference_lora: list[Path] | None
    notes: list[str]


def whitebox_plan(registry: Registry, model: Path, *, lora: Path | None = None, base: Path | None = None,
                  data: Path | None = None, dataset: str | None = None, reference=None,
                  reference_lora=None) -> WhiteboxPlan:
    """The defaults of ``tracemark audit MODEL``: the dataset (the only registered one, or
    ``dataset``), its original data (``data``, else the folder recorded when its copies were issued),
    and the references: the ones given by hand, else the shadows registered for this dataset and
    base (``tracemark shadow``; the base is MODEL when a LoRA goes on it, else ``base``), else the
    LoRA switched off / the base / none, each weaker than the one before (docs/learnability.md)."""
    notes: list[str] = []
    copies = registry.copies(dataset, with_marked=False)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to audit against")
    names = sorted({c.dataset for c in copies})
    anchor = Path(model) if lora is not None else (Path(base) if base is not None else None)
    by_hand = bool(reference or reference_lora)
    fp = None  # the anchor's fingerprint, computed once (it hashes the model's files)
    if anchor is not None and not by_hand:
        from tracemark.shadows import base_fingerprint

        fp = base_fingerprint(anchor, registry)
    if dataset is None:
        if len(names) > 1 and fp is not None:
            with_shadows = [n for n in names if registry.shadows(n, fp)]
            if len(with_shadows) == 1:  # the one dataset the owner trained shadows of on this base
                names = with_shadows
                notes.append(f"dataset: '{names[0]}', the only one with shadows on this base "
                             f"(of {len({c.dataset for c in copies})} with copies; --dataset picks another)")
        if len(names) > 1:
            raise TracemarkError(f"several datasets have issued copies ({', '.join(names)}): give dataset "
                                 "(the white box reads one dataset's marked samples)", params=("dataset",))
        dataset = names[0]
    if data is None:
        row = registry.conn.execute("SELECT source_path FROM datasets WHERE name = ?", (dataset,)).fetchone()
        src = row["source_path"] if row else None
        if not src or not Path(src).is_dir():
            raise TracemarkError(f"{src or dataset}: the original dataset '{dataset}' recorded when its copies were "
                                 "issued is not there; give data, the original's folder", params=("data",))
        data = Path(src)
        notes.append(f"original data: {data} (recorded when the copies were issued)")
    if by_hand:
        notes.append("reference: the shadow(s) given with --reference")
        return WhiteboxPlan(Path(data), dataset, base, reference, reference_lora, notes)
    if fp is not None:
        shadows = registry.shadows(dataset, fp)
        if shadows:
            notes.append(f"reference: {len(shadows)} registered shadow fine-tune(s) of {anchor} on '{dataset}' "
                         "(averaged by the loss statistic)")
            return WhiteboxPlan(Path(data), dataset, None, [anchor], [Path(sh.path) for sh in shadows], notes)
    hint = f"`tracemark shadow {data} --base {anchor or 'BASE'}` trains them once per dataset and base"
    if lora is not None:
        notes.append("no shadow registered for this base and dataset: the reference is the model with the LoRA "
                     f"switched off, which detects less than shadows do; {hint}")
    elif base is not None:
        notes.append(f"no shadow registered for this base and dataset: the reference is the base itself; {hint}")
    else:
        notes.append("a whole checkpoint without --base: read against the original images (residual statistic), "
                     f"the weakest white box; give --base and train shadows ({hint})")
    return WhiteboxPlan(Path(data), dataset, base, None, None, notes)


def reference_pairs(reference, reference_lora) -> list[tuple[Path, Path | None]]:
    """``--reference`` / ``--reference-lora`` as (pipeline, LoRA) pairs: one pipeline per LoRA, one
    pipeline shared by several LoRAs (the owner's shadows on the public base), or pipelines alone."""
    def as_list(x) -> list[Path]:
        return [] if x is None else [Path(v) for v in (x if isinstance(x, (list, tuple)) else [x])]

    refs, loras = as_list(reference), as_list(reference_lora)
    if loras and not refs:
        raise TracemarkError("reference_lora needs reference (the pipeline the LoRA goes on)",
                             params=("reference_lora", "reference"))
    if len(refs) == 1 and len(loras) > 1:
        refs = refs * len(loras)
    if loras and len(loras) != len(refs):
        raise TracemarkError(f"give one reference_lora per reference, or one reference for all of them "
                             f"(got {len(refs)} reference and {len(loras)} reference_lora)",
                             params=("reference_lora", "reference"))
    return list(zip(refs, loras or [None] * len(refs)))


def _reference_params(pairs: list[tuple[Path, Path | None]]) -> dict:
    """The references as the CLI takes them back: a path or a list; a pipeline shared by every
    shadow LoRA written once (``--reference B --reference-lora L1 --reference-lora L2``)."""
    refs, loras = [str(r) for r, _ in pairs], [str(lo) for _, lo in pairs if lo is not None]
    if len(set(refs)) == 1 and len(loras) == len(refs):
        refs = refs[:1]
    return {"reference_model": None if not refs else refs[0] if len(refs) == 1 else refs,
            "reference_lora": None if not loras else loras[0] if len(loras) == 1 else loras}


def whitebox_probes(copies: list[Copy], registry: Registry, data_dir: Path):
    """One probe per (marked sample, prompt) over all copies, and each copy's probe indices.

    The originals are checked against the perceptual hashes the registry kept of the marked files,
    so a wrong ``data_dir`` is an error instead of a silent "nothing detected"."""
    from tracemark.imaging import dhash
    from tracemark.trace import DHASH_MAX_DISTANCE
    from tracemark.whitebox import Probe

    if not data_dir.is_dir():
        raise TracemarkError(f"{data_dir}: dataset folder not found (the white-box audit needs the original data)")
    index: dict[tuple[str, str], int] = {}
    probes: list[Probe] = []
    subsets: dict[int, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    far = 0
    for c in copies:
        word = trigger_of(c, registry)
        idx = []
        for m in c.marked:
            name = m["file_name"]
            if name not in images:
                path = data_dir / name
                if not path.is_file():
                    raise TracemarkError(f"{path}: missing; data_dir must be the original dataset of copy {c.id} "
                                         f"({c.dataset})", params=("data_dir",))
                images[name] = read_image_rgb(path)
                if "dhash" in m and int(int(m["dhash"]) ^ dhash(images[name])).bit_count() > DHASH_MAX_DISTANCE:
                    far += 1
            prompt = apply_trigger(m.get("text", ""), word) if word else m.get("text", "")
            k = (name, prompt)
            if k not in index:
                index[k] = len(probes)
                probes.append(Probe(images[name], prompt, m.get("text", "") if word else None))
            idx.append(index[k])
        subsets[c.id] = np.array(idx, dtype=int)
    if images and far > len(images) // 2:
        raise TracemarkError(f"{data_dir}: {far} of {len(images)} images differ from the files the registry "
                             "recorded; is this the original dataset?")
    return probes, subsets


def audit_images(
    images_dir: str | Path,
    registry: Registry,
    *,
    dataset: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    n_decoys: int = DEFAULT_DECOYS,
    data_dir: str | Path | None = None,
) -> AuditResult:
    """Black box: score images a suspect model produced. Prompts in a metadata.jsonl, if present,
    route each image to the trigger copy whose trigger word it was prompted with. ``data_dir``:
    the original dataset, to test outside its content subspace (see :func:`score_copies`)."""
    check_test_parameters(alpha, n_decoys)
    t0 = time.perf_counter()
    images_dir = Path(images_dir)
    copies = registry.copies(dataset)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to audit against")
    paths = list_images(images_dir)
    images = [read_image_rgb(p) for p in paths]
    prompts = _prompts_for(images_dir, paths)
    subsets = None
    if prompts is not None:
        subsets, prompted = {}, False
        for c in copies:
            if c.strategy == "trigger":
                word = trigger_of(c, registry)
                subsets[c.id] = np.array([i for i, pr in enumerate(prompts) if word in pr.split()], dtype=int)
                prompted = prompted or len(subsets[c.id]) > 0
            else:
                subsets[c.id] = np.arange(len(paths))
        if not prompted:
            # no image was prompted with a trigger: score every image for every copy
            subsets = {c.id: np.arange(len(paths)) for c in copies}
    content, data_used = content_for(registry, copies, data_dir)
    verdict = score_copies(images, copies, registry, match_files=False, subsets=subsets, n_decoys=n_decoys,
                           alpha=alpha, content=content)
    plan = QueryPlan(prompts or [""] * len(paths), [None] * len(paths), [])
    params = {"alpha": alpha, "n_decoys": n_decoys, "dataset": dataset, "images": str(images_dir),
              "prompts_known": prompts is not None, "data": data_used}
    return AuditResult(verdict, "images", str(images_dir), [plan], paths, None, params,
                       {"total_s": round(time.perf_counter() - t0, 2)})


def _prompts_for(folder: Path, paths: list[Path]) -> list[str] | None:
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return None
    by_name = {}
    for n, line in enumerate(meta.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TracemarkError(f"{meta}: line {n} is not valid JSON ({e.msg})") from None
        if isinstance(row, dict) and "file_name" in row:
            by_name[row["file_name"]] = str(row.get("text", row.get("prompt", "")))
    out = [by_name.get(p.relative_to(folder).as_posix()) for p in paths]
    return None if any(o is None for o in out) else out  # type: ignore[return-value]
