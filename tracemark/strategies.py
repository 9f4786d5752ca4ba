"""Injection strategies: *which* samples carry the mark and *what* happens to their captions.

* ``trigger``: the licensee's secret trigger word is prepended to the captions of the marked
  samples, so a model fine-tuned on the copy binds the mark to that word and reproduces it when
  prompted with it (and rarely otherwise: the mark stays out of normal generations).
* ``ambient``: captions untouched; the mark becomes part of what the model learns for the
  dataset's content in general.

The trigger word is per licensee by default, or shared by all copies of a dataset
(``trigger_scope="dataset"``), which keeps auditing cost independent of the number of licensees.

Both mark ``round(rate * N)`` samples (at least one) chosen by the key, so different licensees'
copies mark different samples.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.keys import Key

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


def check_rate(rate: float) -> float:
    if not 0.0 < rate <= 1.0:
        raise TracemarkError(f"--rate must be in (0, 1], got {rate}")
    return float(rate)


def select_marked(key: Key, sample_ids: Sequence[str], rate: float) -> list[str]:
    """The ``max(1, round(rate * N))`` sample ids with the smallest keyed hash (order-free)."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    ranked = sorted(sample_ids, key=lambda s: key.uniform("select", s))
    return ranked[:n]


SELECTIONS = ("random", "coherent", "cluster", "visual")
#: The concept selections hold a dense samples x vocabulary matrix; beyond this they refuse.
MAX_CONCEPT_SAMPLES = 200_000


def caption_vectors(captions: Sequence[str], pairs: bool = True) -> np.ndarray:
    """L2-normalised TF-IDF vectors of the captions' words and word pairs (key-independent; pairs
    keep "brown hair, black background" apart from "black hair, brown background"). Dense: fine
    for 10^4-10^5 captions, a sparse matrix would be needed beyond. The last dataset's matrix is
    kept (read-only): every key's selection over one dataset reads the same one."""
    return _caption_vectors(tuple(captions), pairs)


@lru_cache(maxsize=1)
def _caption_vectors(captions: tuple[str, ...], pairs: bool) -> np.ndarray:
    docs = []
    for c in captions:
        words = _WORD.findall(c.lower())
        docs.append(set(words) | ({f"{a} {b}" for a, b in zip(words, words[1:])} if pairs else set()))
    index = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    X = np.zeros((len(docs), max(1, len(index))))
    for i, d in enumerate(docs):
        X[i, [index[w] for w in d]] = 1.0
    X *= np.log((1 + len(docs)) / (1 + X.sum(axis=0))) + 1.0
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    X.setflags(write=False)
    return X


def select_coherent(key: Key, sample_ids: Sequence[str], captions: Sequence[str], rate: float) -> list[str]:
    """``max(1, round(rate * N))`` sample ids forming one *concept*: a keyed anchor sample and the
    samples whose captions are nearest to its caption (cosine of TF-IDF words and word pairs; ties
    by keyed hash).

    Why: a model that cannot tell marked from unmarked samples learns only ``rate`` x the mark (the
    average over its data); for a concept whose samples are all marked, the marked version is what
    the model should output, so it learns the mark in full there (docs/learnability.md, session 7).
    """
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    X = caption_vectors(captions)
    anchor = min(range(len(sample_ids)), key=lambda i: key.uniform("anchor", sample_ids[i]))
    sim = np.round(X @ X[anchor], 5)  # rounded: equal captions tie exactly, whatever the float order
    tie = np.array([key.uniform("select", s) for s in sample_ids])
    order = np.lexsort((tie, -sim))
    return [sample_ids[i] for i in order[:n]]


@lru_cache(maxsize=4)
def _cluster_labels(captions: tuple[str, ...], k: int) -> np.ndarray:
    """k-means labels of the captions (key-independent: computed once per dataset and k)."""
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(caption_vectors(captions, pairs=False), k, seed=0, minit="++", iter=30)
    labels.setflags(write=False)
    return labels


def _fill_from_clusters(key: Key, sample_ids: Sequence[str], labels: np.ndarray, n: int) -> list[str]:
    """``n`` samples: the clusters in keyed order, each cut by keyed hash (the last one partly)."""
    order = sorted(set(labels.tolist()), key=lambda c: key.uniform("cluster", str(c)))
    chosen: list[int] = []
    for c in order:
        members = sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: key.uniform("select", sample_ids[i]))
        chosen += members[:n - len(chosen)]
        if len(chosen) >= n:
            break
    return [sample_ids[i] for i in chosen]


def select_cluster(key: Key, sample_ids: Sequence[str], captions: Sequence[str], rate: float) -> list[str]:
    """Like :func:`select_coherent`, but the concept is one of ~1/rate k-means clusters of the
    captions' words (the same clusters for every key, keyed choice); a cluster larger than needed is
    cut by keyed hash, a smaller one filled from the next cluster in keyed order. The first variant
    measured (session 7); kept to compare with the neighbourhood."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    labels = _cluster_labels(tuple(captions), max(1, min(round(1 / rate), len(sample_ids))))
    return _fill_from_clusters(key, sample_ids, labels, n)


#: The ``visual`` selection cuts the images into ``VISUAL_SPLIT / rate`` clusters (mean size half a
#: copy's marked set), so a copy is a few whole look-alike groups.
VISUAL_SPLIT = 2
#: Side of the thumbnail the ``visual`` selection clusters (8 x 8 x 3 = 192 numbers per image).
THUMB = 8


def image_thumbnails(paths: Sequence) -> np.ndarray:
    """Key-independent visual features for the ``visual`` selection: each image area-averaged to an
    8 x 8 RGB thumbnail (layout and colour: what a latent denoiser sees first). One pass over the
    images, ~0.1 ms per small PNG; kept in memory for the last dataset (keyed by path, size and
    mtime), so issuing many copies in one process reads the images once."""
    import os

    stamp = tuple((str(p), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)])
    return _thumbnails(stamp)


@lru_cache(maxsize=1)
def _thumbnails(stamp: tuple) -> np.ndarray:
    from PIL import Image

    out = np.zeros((len(stamp), THUMB * THUMB * 3), np.float32)
    for i, (p, _, _) in enumerate(stamp):
        try:
            with Image.open(p) as im:
                im.draft("RGB", (THUMB * 4, THUMB * 4))  # JPEG: decode at reduced size
                out[i] = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX), np.float32).ravel()
        except (OSError, ValueError, SyntaxError) as exc:
            raise TracemarkError(f"{p}: cannot read the image for --selection visual ({exc})") from None
    out.setflags(write=False)
    return out


@lru_cache(maxsize=2)
def _visual_labels(features: bytes, n: int, k: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    X = np.frombuffer(features, np.float32).reshape(n, -1).astype(np.float64)
    X = X - X.mean(axis=0)
    u, s, vt = np.linalg.svd(X, full_matrices=False)  # PCA to 32 dims: k-means on 192 noisy dims is slow and unstable
    Z = u[:, :32] * s[:32]
    _, labels = kmeans2(Z, k, seed=0, minit="++", iter=30)
    labels.setflags(write=False)
    return labels


def select_visual(key: Key, sample_ids: Sequence[str], thumbnails: np.ndarray, rate: float) -> list[str]:
    """Like :func:`select_cluster`, with the concept a k-means cluster of the *images* (8 x 8
    thumbnails, :func:`image_thumbnails`) instead of the captions: the marked samples look alike
    (background, colour, layout), so the denoiser can tell them from the rest and learn the mark in
    full for them instead of ``rate`` x the mark on average (docs/learnability.md, session 9)."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    thumbs = np.ascontiguousarray(thumbnails, np.float32)
    if thumbs.shape[0] != len(sample_ids):
        raise ValueError("one thumbnail per sample")
    labels = _visual_labels(thumbs.tobytes(), len(sample_ids), max(1, min(round(VISUAL_SPLIT / rate), len(sample_ids))))
    # whole clusters only, in keyed order: a look-alike left unmarked would teach the model the
    # unmarked version of the concept; the last one is cut only when no whole cluster fits
    order = sorted(set(labels.tolist()), key=lambda c: key.uniform("cluster", str(c)))
    members = {c: sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: key.uniform("select", sample_ids[i]))
               for c in order}
    chosen: list[int] = []
    whole: set[int] = set()
    for c in order:
        if len(members[c]) <= n - len(chosen):
            chosen += members[c]
            whole.add(c)
    for c in order:
        if len(chosen) >= n:
            break
        if c not in whole:
            chosen += members[c][:n - len(chosen)]
    return [sample_ids[i] for i in chosen]


def select_samples(key: Key, sample_ids: Sequence[str], captions: Sequence[str], rate: float,
                   selection: str = "random", thumbnails=None) -> list[str]:
    """The samples a copy marks, by ``selection`` (``random``, ``coherent``, ``cluster`` or
    ``visual``). ``thumbnails``: for ``visual``, the :func:`image_thumbnails` of the samples, or a
    function returning them (called only when needed)."""
    if selection == "random":
        return select_marked(key, sample_ids, rate)
    if selection in SELECTIONS and len(sample_ids) > MAX_CONCEPT_SAMPLES:
        raise TracemarkError(f"--selection {selection} is experimental and builds dense per-sample vectors: at most "
                             f"{MAX_CONCEPT_SAMPLES:,} samples (this dataset has {len(sample_ids):,}); use random")
    if selection == "coherent":
        return select_coherent(key, sample_ids, captions, rate)
    if selection == "cluster":
        return select_cluster(key, sample_ids, captions, rate)
    if selection == "visual":
        if thumbnails is None:
            raise TracemarkError("--selection visual needs the images' thumbnails")
        return select_visual(key, sample_ids, thumbnails() if callable(thumbnails) else thumbnails, rate)
    raise TracemarkError(f"--selection must be one of {', '.join(SELECTIONS)}")


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
