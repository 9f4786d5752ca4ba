"""A verdict as the commands give it (trace-files, audit): a table and one sentence on the
terminal, and one JSON document of schema :data:`VERDICT_SCHEMA` (docs/audit.md, "The verdict as
JSON")."""

from __future__ import annotations

from typing import Optional

from rich.text import Text

from tracemark.cli.output import console, err_console, print_table
from tracemark.version import __version__

#: Version of the JSON document every verdict is written as (docs/audit.md, "The verdict as JSON").
VERDICT_SCHEMA = "tracemark.verdict/1"
#: Fields every verdict document starts with, whatever its kind (docs/audit.md).
VERDICT_FIELDS = ("schema", "tracemark_version", "kind", "target", "used", "named", "p_value", "alpha", "sentence",
                  "n_images", "n_decoys", "licensees")


def licensee_rows(verdict) -> list[dict]:
    """One entry per tested copy, the same keys for every kind of verdict (``licensees`` in the JSON)."""
    return [{"id": s.copy_id, "licensee": s.licensee, "dataset": s.dataset, "scheme": s.scheme,
             "strategy": s.strategy, "score": s.statistic, "z": s.z, "p_value": s.p_value, "p_holm": s.p_holm,
             "p_empirical": s.p_empirical, "n_images": s.n_images, "n_matched": getattr(s, "n_matched", 0),
             "named": s.named, "stage": getattr(s, "stage", 1)} for s in verdict.scores]


def verdict_document(kind: str, target: str, verdict, extra: Optional[dict] = None) -> dict:
    """The one JSON schema of a verdict (trace-files and every audit): :data:`VERDICT_FIELDS` first,
    then the kind's own fields (``extra``; they never replace the common ones, except ``n_images``)."""
    doc = {"schema": VERDICT_SCHEMA, "tracemark_version": __version__, "kind": kind, "target": target,
           "used": bool(verdict.used), "named": list(verdict.named), "p_value": verdict.p_value,
           "alpha": verdict.alpha, "sentence": verdict.sentence(), "n_images": verdict.n_images,
           "n_decoys": verdict.n_decoys, "licensees": licensee_rows(verdict)}
    for k, v in (extra or {}).items():
        if k not in doc or k == "n_images":
            doc[k] = v
    return doc


def print_verdict(verdict, top: int = 10) -> None:
    """The likeliest copies as a table, what could not be tested, then the verdict's sentence."""
    scores = sorted(verdict.scores, key=lambda s: s.p_value)[:top]
    matched = any(getattr(s, "n_matched", 0) for s in scores)
    headers = ["copy", "dataset", "licensee", "scheme", "z", "p", "p (Holm)", "images",
               *(["matched"] if matched else []), "named"]
    rows, styles = [], {}
    for k, s in enumerate(scores):
        rows.append([str(s.copy_id), s.dataset, s.licensee, s.scheme, f"{s.z:.2f}", f"{s.p_value:.2e}",
                     f"{s.p_holm:.2e}", str(s.n_images), *([str(s.n_matched)] if matched else []),
                     "YES" if s.named else "no"])
        if s.named:
            styles[(k, "named")] = "bold red"
    print_table(headers, rows, numeric=["copy", "z", "p", "p (Holm)", "images", "matched", "named"],
                optional=["scheme", "dataset", "images"], styles=styles)
    for line in getattr(verdict, "untested", []):
        err_console.print(f"[yellow]not tested:[/] {line}", highlight=False, soft_wrap=True)
    # three outcomes: named (red), no evidence (yellow: never a green acquittal), error (one line, exit 1)
    console.print(Text(verdict.sentence(), style="bold red" if verdict.used else "bold yellow"), highlight=False,
                  soft_wrap=not console.is_terminal)  # piped: one line, as grep expects
