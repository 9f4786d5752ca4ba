"""White box: read every copy's marked samples through the suspect's denoiser
(:mod:`tracemark.diffusion.denoiser`), no sampling, and test every copy on what was read."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tracemark.audit.references import (DEFAULT_WHITEBOX_STATISTIC, WHITEBOX_STATISTICS, _reference_params,
                                        reference_pairs)
from tracemark.audit.result import AuditResult
from tracemark.audit.shadows import model_hash
from tracemark.detection.scoring import DEFAULT_ALPHA, DEFAULT_DECOYS, check_test_parameters, content_for, score_copies
from tracemark.diffusion.sampling import check_generation_options
from tracemark.errors import TracemarkError
from tracemark.io.dataset import read_image_rgb
from tracemark.marking.trigger import apply_trigger, trigger_of
from tracemark.registry.database import Copy, Registry

#: Marked samples a white-box audit reads per copy at most (:func:`whitebox_probes`). A copy's z grows
#: like the square root of the samples read and the audit's time linearly with the probes: the CPU
#: world's copies were named from 50 samples (z 3.4-5.0, docs/learnability.md), so 256 forecast about
#: 2.3x that z, while a copy of a 10^6-image dataset at 2% has 20,000 marked samples (a trigger
#: copy's are all probes of its own). Datasets below 12,800 images are read whole at the default rate.
DEFAULT_MAX_PROBES_PER_COPY = 256
#: The registry key that orders a dataset's samples for the cap: secret (a fine-tuner who knew the
#: order could leave out the few samples every capped audit reads), one per dataset (so that copies
#: keep the same samples where they marked the same ones); no licensee can have this name.
PROBE_ORDER_ID = "\x00whitebox-probe-order"
_PROBE_ORDER_DOMAIN = "tracemark/v1/whitebox-probe-order"


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
    max_probes_per_copy: int | None = DEFAULT_MAX_PROBES_PER_COPY,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """White box: read every copy's marked samples through the suspect's denoiser (no sampling).

    ``statistic``: ``"loss"`` (what ``"auto"`` picks when there is a reference model), the paired
    denoising-loss test linearised: the gradient, in pixels, of how much better the suspect fits
    the sample than the reference does
    (:func:`tracemark.diffusion.denoiser.loss_gradients`); ``"residual"``: the suspect's clean-image prediction
    minus the reference's (:func:`tracemark.diffusion.denoiser.denoiser_residuals`). Both are scored by the
    copies' schemes against decoy keys; on the CPU world's 38 dB / 2% fine-tunes the loss statistic
    read 2.5x the z of the residual (docs/research/learnability_log.md). ``"loss"`` needs a reference
    (a LoRA, ``base`` or ``reference``).

    ``data_dir``: the owner's original dataset (the residuals start from the unmarked images).
    ``base``: the public base pipeline, the reference for a whole checkpoint; a LoRA is compared
    with its own pipeline with the LoRA switched off, and with neither the residual is taken
    against the original image. See :mod:`tracemark.diffusion.denoiser`.
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

    ``max_probes_per_copy``: marked samples read per copy at most (None: all); see
    :func:`whitebox_probes` and :data:`DEFAULT_MAX_PROBES_PER_COPY`. The params record it and, per
    copy id, ``[read, marked]``.

    ``progress(done, total)``: marked samples read so far and in all (one pass per shadow).
    """
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.diffusion.denoiser import (DEFAULT_DRAWS, DEFAULT_T_FRACS, denoiser_residuals, has_lora,
                                              latent_loss_gradients, shadow_statistic)

    check_test_parameters(alpha, n_decoys)
    check_generation_options(seed=seed)
    check_max_probes_per_copy(max_probes_per_copy)
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
    probes, subsets = whitebox_probes(copies, registry, data_dir, max_probes_per_copy=max_probes_per_copy)
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
                           alpha=alpha, seed=seed, content=content_for(registry, copies, data_dir)[0],
                           at=[p.image for p in probes])
    kind = ("shadow" if mode == "base" else "lora-off" if lora is not None
            else ("base" if ref_pipe is not None else "data"))
    params = {"seed": seed, "alpha": alpha, "n_decoys": n_decoys, "dataset": dataset, "model": str(model_dir),
              "config": str(config) if config else None, "lora": str(lora) if lora else None,
              "base": str(base) if base else None, "reference": kind,
              **_reference_params(pairs),
              "n_references": len(shadows) if shadows else int(kind != "data"),
              "t_fracs": list(t_fracs), "draws": draws, "data": str(data_dir), "n_probes": len(probes),
              "statistic": statistic, "max_probes_per_copy": max_probes_per_copy,
              "marked_read": {str(c.id): [len(subsets[c.id]), len(c.marked)] for c in copies}}
    timings = {"load_s": round(t_load - t0, 2), "residuals_s": round(t_res - t_load, 2),
               "total_s": round(time.perf_counter() - t0, 2)}
    gain = 8.0 if statistic == "residual" else 16.0  # residuals in gray levels; loss gradients at unit RMS
    shown = [np.clip(128 + gain * r, 0, 255).astype(np.uint8) for r in residuals[:64]]  # amplified for the eye
    return AuditResult(verdict, "whitebox", str(model_dir), [], [], model_hash(model_dir, lora, registry), params, timings,
                       images=shown, n_images=len(residuals))


def check_max_probes_per_copy(value: int | None) -> int | None:
    """``max_probes_per_copy`` as :func:`whitebox_probes` takes it: a whole number >= 1, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise TracemarkError(f"max_probes_per_copy must be a whole number >= 1 (or None: all), got {value!r}",
                             params=("max_probes_per_copy",))
    return value


def probe_order(registry: Registry, dataset: str, names) -> dict[str, bytes]:
    """Each file name's place in ``dataset``'s probe order (smaller first): a keyed hash of the name
    alone (:data:`PROBE_ORDER_ID`), so the same whatever the copy, the suspect or the other copies."""
    key = registry.key_for(dataset, PROBE_ORDER_ID)
    return {n: key.prf(_PROBE_ORDER_DOMAIN, n.encode("utf-8")) for n in names}


def probe_subset(copy: Copy, order: dict[str, bytes], max_probes_per_copy: int | None) -> list[dict]:
    """The copy's marked samples that a capped audit reads: the ``max_probes_per_copy`` first in the
    dataset's probe order (:func:`probe_order`), in the order the copy lists them; all when uncapped
    or when the copy has no more. Two copies that marked the same samples read the same ones."""
    marked = list(copy.marked)
    if max_probes_per_copy is None or len(marked) <= max_probes_per_copy:
        return marked
    keep = set(sorted(range(len(marked)), key=lambda i: (order[marked[i]["file_name"]], i))[:max_probes_per_copy])
    return [m for i, m in enumerate(marked) if i in keep]


def whitebox_probes(copies: list[Copy], registry: Registry, data_dir: Path, *,
                    max_probes_per_copy: int | None = DEFAULT_MAX_PROBES_PER_COPY):
    """One probe per (marked sample, prompt) over all copies, and each copy's probe indices.

    ``max_probes_per_copy``: each copy reads at most this many of its marked samples (None: all), the
    first in a keyed order of the file names that depends on the dataset alone (:func:`probe_order`):
    the subset is the same whichever copies are audited with it, and samples that several copies
    marked are kept by all of them, so ambient copies share their probes. Only those images are
    decoded. The originals are checked against the perceptual hashes the registry kept of the
    marked files, so a wrong ``data_dir`` is an error instead of a silent "nothing detected"."""
    from tracemark.io.imaging import dhash
    from tracemark.detection.scoring import DHASH_MAX_DISTANCE
    from tracemark.diffusion.denoiser import Probe

    check_max_probes_per_copy(max_probes_per_copy)
    if not data_dir.is_dir():
        raise TracemarkError(f"{data_dir}: dataset folder not found (the white-box audit needs the original data)")
    index: dict[tuple[str, str], int] = {}
    probes: list[Probe] = []
    subsets: dict[int, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    orders: dict[str, dict[str, bytes]] = {}
    far = 0
    for c in copies:
        word = trigger_of(c, registry)
        idx = []
        order: dict[str, bytes] = {}
        if max_probes_per_copy is not None and len(c.marked) > max_probes_per_copy:
            order = orders.setdefault(c.dataset, {})
            new = {m["file_name"] for m in c.marked} - order.keys()
            if new:
                order.update(probe_order(registry, c.dataset, sorted(new)))
        for m in probe_subset(c, order, max_probes_per_copy):
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
