"""Black box: audit a suspect model by sampling it with the query plan (:mod:`tracemark.audit.plan`),
in one stage or two (:func:`merge_stages`), or only images it generated (:func:`audit_images`).

Generation runs through :mod:`tracemark.diffusion`; torch and diffusers are imported only when a
model is audited."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tracemark.audit.plan import MAX_CANDIDATES, MIN_PER_COPY, QueryPlan, build_plan
from tracemark.audit.result import AuditResult
from tracemark.audit.shadows import model_hash
from tracemark.detection.scoring import DEFAULT_ALPHA, DEFAULT_DECOYS, check_test_parameters, content_for, score_copies
from tracemark.detection.verdict import Verdict
from tracemark.diffusion.sampling import check_generation_options
from tracemark.errors import TracemarkError
from tracemark.io.dataset import list_images, read_image_rgb
from tracemark.marking.trigger import trigger_of
from tracemark.registry.database import Registry


def check_audit_options(*, n: int = 64, seed: int = 0, steps: int = 25, guidance: float = 6.0, batch_size: int = 32,
                        alpha: float = DEFAULT_ALPHA, n_decoys: int = DEFAULT_DECOYS) -> None:
    """Every numeric option of ``tracemark audit`` at once, before the registry or a model is read."""
    check_generation_options(n=n, seed=seed, steps=steps, guidance=guidance, batch_size=batch_size)
    check_test_parameters(alpha, n_decoys)


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
