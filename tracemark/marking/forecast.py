"""What a copy's marked samples can prove, read off the project's measured power curve.

Before anything is written, an owner should know whether the copy they are about to issue can
be detected through a model at all. The answer is not computed from a formula: it is the
measured detection of LoRA fine-tunes at each number of marked samples
(``tracemark/data/power_curve.json``, with the command and source of every row), looked up at the
largest measured count that the copy reaches. Power follows the *number* of marked samples, not
the rate (docs/research/learnability_log.md: 10 marked samples gave the same z at 2% of 500 images as at 1%
of 1000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def power_curve() -> dict:
    """The measured curve shipped with the package (see the module docstring)."""
    return json.loads(resources.files("tracemark").joinpath("data/power_curve.json").read_text(encoding="utf-8"))


@dataclass
class Forecast:
    """What the measurements say about ``n_marked`` marked samples per copy."""

    n_marked: int
    whitebox: str
    blackbox: str
    enough: bool
    needed: int

    def lines(self) -> list[str]:
        return [f"white box (model weights + your shadows): {self.whitebox}", f"black box (images only): {self.blackbox}"]


def _fraction(text: str) -> float:
    k, _, n = text.partition("/")
    try:
        return int(k) / int(n.split()[0])
    except (ValueError, ZeroDivisionError):
        return 0.0


def forecast(n_marked: int) -> Forecast:
    """Look ``n_marked`` up in the measured curve: the rows at the largest measured count <= it."""
    curve = power_curve()
    rows = curve["whitebox"]
    # the smallest count at which every measured model of every domain was detected (TPR at 1e-3)
    counts = sorted({r["n_marked"] for r in rows})
    needed = next((c for c in counts if all(_fraction(r["tpr_1e-3"]) >= 0.5 for r in rows if r["n_marked"] == c)),
                  counts[-1])
    at = [c for c in counts if c <= n_marked]
    if not at:
        wb = (f"{n_marked} marked sample(s) is below anything measured: {counts[0]} marked samples were detected in "
              f"{' and '.join(r['tpr_1e-3'] for r in rows if r['n_marked'] == counts[0])} models at p < 1e-3; "
              f"about {needed} are needed")
        enough = False
    else:
        c = at[-1]
        parts = [f"{r['tpr_1e-3']} {r['domain'].split(' (')[0]}" for r in rows if r["n_marked"] == c]
        enough = c >= needed
        wb = f"measured at {c} marked samples: detected (p < 1e-3) in {', '.join(parts)} fine-tunes"
        if c == counts[-1] and n_marked > c:
            wb += f" (more than {c} not measured)"
        if not enough:
            wb += f"; about {needed} are needed for reliable detection"
    bb = "no detection measured at any invisible strength: keep a copy of the suspect model's weights"
    return Forecast(n_marked, wb, bb, enough, needed)
