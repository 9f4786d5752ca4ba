"""What the white box reads a suspect against: the dataset, its original data and the reference
models (given by hand, the shadows registered by :mod:`tracemark.audit.shadows`, the LoRA switched
off, the base), chosen from what the registry knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.registry.database import Registry

#: White-box statistics (:func:`tracemark.audit.whitebox.audit_whitebox`); "auto": "loss" when there is a
#: reference model, else "residual".
WHITEBOX_STATISTICS = ("auto", "loss", "residual")
DEFAULT_WHITEBOX_STATISTIC = "auto"


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
        from tracemark.audit.shadows import base_fingerprint

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
