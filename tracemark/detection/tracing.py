"""Trace leaked files: which licensee's copy are they? The files are read, matched to marked samples
and scored (:func:`tracemark.detection.scoring.score_copies`); they are never modified."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tracemark.detection.scoring import DEFAULT_ALPHA, DEFAULT_DECOYS, content_for, score_copies
from tracemark.detection.verdict import Verdict
from tracemark.errors import TracemarkError
from tracemark.io.dataset import list_images, read_image_rgb
from tracemark.registry.database import Registry


def load_images(paths: Sequence[Path]) -> list[np.ndarray]:
    return [read_image_rgb(p) for p in paths]


def trace_files(
    leaked_dir: str | Path,
    registry: Registry,
    *,
    dataset: str | None = None,
    n_decoys: int = DEFAULT_DECOYS,
    alpha: float = DEFAULT_ALPHA,
    progress: Callable[[int, int], None] | None = None,
    data_dir: str | Path | None = None,
) -> Verdict:
    """Which licensee's copy are these leaked files? Reads images only, never modifies them.

    ``data_dir``: the original dataset (default: the folder recorded when the copies were issued,
    when it is still there). Each leaked file matched to a marked sample is then scored as the file
    minus its original (non-blind): the images' content, which a key can happen to align with, is
    gone, so a licensee cannot be accused by the content of the samples their copy marked, and the
    mark is read without the content's noise. Also tests outside the content subspace
    (:func:`tracemark.detection.stats.content_basis`)."""
    leaked_dir = Path(leaked_dir)
    paths = list_images(leaked_dir)
    copies = registry.copies(dataset)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to test against")
    t0 = time.perf_counter()
    images = []
    for i, p in enumerate(paths):
        images.append(read_image_rgb(p))
        if progress:
            progress(i + 1, len(paths))
    names = [p.relative_to(leaked_dir).as_posix() for p in paths]
    content, used = content_for(registry, copies, data_dir)
    verdict = score_copies(images, copies, registry, names=names, n_decoys=n_decoys, alpha=alpha, content=content,
                           originals=used)
    verdict.timings["content_from"] = used
    verdict.timings["load_s"] = round(time.perf_counter() - t0 - verdict.timings["scoring_s"], 3)
    return verdict
