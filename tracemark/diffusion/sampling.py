"""Sampling options (image count, seed, steps, guidance, batch size), checked before any model is
loaded: shared by the black-box audit and ``generate``, below both, so neither imports the other."""

from __future__ import annotations

import math

import numpy as np

from tracemark.errors import TracemarkError

#: Seeds are 0 .. 2**32 - 1: the audit's query plan scales them by ~1e5 and numpy's generators refuse
#: negative seeds, so anything outside would fail after the model is loaded.
MAX_SEED = 2**32 - 1


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_generation_options(*, n: int | None = None, seed: int | None = None, steps: int | None = None,
                             guidance: float | None = None, batch_size: int | None = None) -> None:
    """One-line errors for sampling options, checked before any model is loaded (``--steps 0`` used to
    fail in the scheduler with a ZeroDivisionError, ``--seed -1`` in numpy, ``--guidance nan`` was
    accepted and gave black images). ``None``: not given."""
    for param, value in (("n", n), ("steps", steps), ("batch_size", batch_size)):
        if value is not None and (not _is_int(value) or value < 1):
            raise TracemarkError(f"{param} must be a positive integer, got {value}", params=(param,))
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise TracemarkError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed}", params=("seed",))
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating))
                                 or not math.isfinite(guidance) or guidance < 0):
        raise TracemarkError(f"guidance must be a finite number >= 0, got {guidance}", params=("guidance",))
