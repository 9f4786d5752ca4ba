"""The query plan of a black-box audit: the prompt and seed of every image a suspect model is asked
for, and the copy (or group of copies sharing a trigger word) each image is scored for.

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

from dataclasses import dataclass, field

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.marking.trigger import apply_trigger, trigger_of
from tracemark.registry.database import Copy, Registry


MIN_PER_COPY = 16
MAX_CANDIDATES = 8


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
