"""Injection strategies and the trigger word: *what* happens to the marked samples' captions.

* ``trigger``: the licensee's secret trigger word is prepended to the captions of the marked
  samples, so a model fine-tuned on the copy binds the mark to that word and reproduces it when
  prompted with it (and rarely otherwise: the mark stays out of normal generations).
* ``ambient``: captions untouched; the mark becomes part of what the model learns for the
  dataset's content in general.

The trigger word is per licensee by default, or shared by all copies of a dataset
(``trigger_scope="dataset"``), which keeps auditing cost independent of the number of licensees.
Which samples are marked: :mod:`tracemark.marking.selection`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tracemark.errors import TracemarkError
from tracemark.registry.keys import Key

if TYPE_CHECKING:
    from tracemark.registry.database import Copy, Registry


STRATEGIES = ("trigger", "ambient")
#: ``licensee``: each copy has its own trigger word (the seed paper's design);
#: ``dataset``: all copies of a dataset share one trigger word while their patterns stay
#: per-licensee, so one set of audit prompts serves every licensee (O(1) queries for tracing).
TRIGGER_SCOPES = ("licensee", "dataset")
#: Pseudo licensee id whose derived key seeds a dataset-wide trigger word.
DATASET_TRIGGER_ID = "\x00dataset-trigger"
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_WORD = re.compile(r"[a-z0-9]+")


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise TracemarkError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
    return name


def vocabulary(captions: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for c in captions:
        words.update(_WORD.findall(c.lower()))
    return words


def trigger_candidate(key: Key, attempt: int = 0, syllables: int = 4) -> str:
    """The ``attempt``-th pronounceable nonsense word of a key (e.g. 'tavoreki')."""
    rng = key.rng("trigger", str(attempt))
    return "".join(
        _CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)
    )


def trigger_word(key: Key, avoid: set[str] | None = None, syllables: int = 4) -> tuple[str, int]:
    """The key's first candidate word not in ``avoid``, and its attempt index.

    The index (not secret) is stored in the registry so an audit re-derives the same word
    without the dataset's vocabulary.
    """
    avoid = avoid or set()
    for attempt in range(1000):
        word = trigger_candidate(key, attempt, syllables)
        if word not in avoid:
            return word, attempt
    raise TracemarkError("could not find a trigger word absent from the captions")  # pragma: no cover


def apply_trigger(caption: str, trigger: str) -> str:
    return f"{trigger} {caption}".strip()


def trigger_of(copy: Copy, registry: Registry) -> str | None:
    """Re-derive a trigger copy's secret trigger word (None for the ambient strategy)."""
    if copy.strategy != "trigger":
        return None
    key = registry.key_for_copy(copy)
    if copy.params.get("trigger_scope") == "dataset":
        key = registry.key_for(copy.dataset, DATASET_TRIGGER_ID)
    return trigger_candidate(key, int(copy.params.get("trigger_attempt", 0)))
