"""What an audit found (:class:`AuditResult`): the verdict, what was scored and how, for the report
and the JSON verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracemark.audit.plan import QueryPlan
from tracemark.detection.verdict import Verdict
from tracemark.version import __version__


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
