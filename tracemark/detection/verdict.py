"""The verdict of a test of images against every issued copy: each copy's score
(:class:`CopyScore`), who is named, and the sentence that says it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CopyScore:
    copy_id: int
    dataset: str
    licensee: str
    scheme: str
    strategy: str
    statistic: float
    z: float
    p_value: float
    p_empirical: float
    p_holm: float
    n_images: int
    matched: bool
    named: bool = False
    #: Leaked files matched to this copy's marked samples (0 when it was scored on all images).
    n_matched: int = 0


@dataclass
class Verdict:
    used: bool
    p_value: float
    alpha: float
    n_images: int
    n_decoys: int
    named: list[str]
    scores: list[CopyScore]
    null: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    #: Copies that could not be tested (e.g. a row whose key the master key does not derive), one line each.
    untested: list[str] = field(default_factory=list)
    #: Why this verdict may say less than it seems to (e.g. no leaked file matched a marked sample).
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = [asdict(s) for s in self.scores]
        d["null"] = {str(k): {kk: vv for kk, vv in v.items() if kk != "decoy_values"} for k, v in self.null.items()}
        return d

    def sentence(self) -> str:
        if not self.scores:
            return "No issued copies to test."
        if self.used:
            who = ", ".join(self.named)
            return (f"Watermark detected: these images carry the mark of {who} "
                    f"(p = {self.p_value:.2e}, Holm-corrected over {len(self.scores)} copies, alpha = {self.alpha}).")
        return (f"No evidence of use: no copy's mark reached the threshold (smallest corrected p = "
                f"{self.p_value:.2e} >= alpha = {self.alpha}; a copy is named from z >= {self.z_needed():.2f}; "
                f"{len(self.scores)} copies tested on {self.n_images} images). Not an acquittal: a test without "
                f"enough marked samples or evidence finds nothing either."
                + "".join(f" Warning: {w}" for w in self.warnings))

    def z_needed(self) -> float:
        """The z at which the most significant copy would be named (Holm's first step, alpha / copies),
        on the normal scale the null is fitted on: what a positive would have needed."""
        from scipy.stats import norm

        return float(norm.isf(self.alpha / max(1, len(self.scores))))
