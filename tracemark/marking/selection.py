"""Which samples carry the mark: ``random``, ``coherent``, ``cluster`` or ``visual`` selection,
drawn by the key.

Every selection marks ``round(rate * N)`` samples (at least one) chosen by the key, so different
licensees' copies mark different samples."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.marking.trigger import _WORD
from tracemark.registry.keys import Key


def check_rate(rate: float) -> float:
    if not 0.0 < rate <= 1.0:
        raise TracemarkError(f"rate must be in (0, 1], got {rate}", params=("rate",))
    return float(rate)


def select_marked(key: Key, sample_ids: Sequence[str], rate: float) -> list[str]:
    """The ``max(1, round(rate * N))`` sample ids with the smallest keyed hash (order-free)."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    ranked = sorted(sample_ids, key=lambda s: key.uniform("select", s))
    return ranked[:n]


SELECTIONS = ("random", "coherent", "cluster", "visual")
#: The caption selections hold a dense samples x vocabulary matrix; beyond this they refuse (``visual``
#: switches to its streaming clustering instead).
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
    the model should output, so it learns the mark in full there
    (docs/research/learnability_log.md).
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
    measured (docs/research/learnability_log.md); kept to compare with the neighbourhood."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    labels = _cluster_labels(tuple(captions), max(1, min(round(1 / rate), len(sample_ids))))
    return _fill_from_clusters(key, sample_ids, labels, n)


#: The ``visual`` selection cuts the images into ``VISUAL_SPLIT / rate`` clusters (mean size half a
#: copy's marked set), so a copy is a few whole look-alike groups.
VISUAL_SPLIT = 2
#: Side of the thumbnail the ``visual`` selection clusters (8 x 8 x 3 = 192 numbers per image).
THUMB = 8
#: Versions of the ``visual`` clustering. 1: dense PCA + scipy k-means (at most
#: :data:`MAX_CONCEPT_SAMPLES` samples); 2: streaming, exact-integer k-means (any size, bounded
#: memory). A copy records the version it was issued with (``selection_version``); a copy without
#: one was issued by version 1 up to :data:`MAX_CONCEPT_SAMPLES` samples and by version 2 beyond
#: (version 1 refused there), which is what ``selection_version=None`` re-derives.
SELECTION_VERSION = 2
SELECTION_VERSIONS = (1, 2)
#: Datasets with more images than this keep their thumbnails in a file (``<home>/cache/thumbnails``),
#: mapped into memory, instead of in RAM (192 bytes an image either way).
THUMBS_IN_MEMORY = 200_000
#: Images decoded per chunk while computing thumbnails, and feature rows per chunk while clustering.
_CHUNK = 8192
#: Version 2: principal directions kept, their fixed-point scale, and the divisor of the projections.
_PCA_DIMS, _W_SCALE, _Z_SHIFT = 32, 256, 32
#: Version 2: rows clustered first (a seeded subsample), Lloyd iterations on it, full passes after,
#: k-means++ seedings tried (the one of least within-cluster distance is kept).
_SUBSAMPLE, _SUB_ITERS, _FULL_PASSES, _N_INIT = 50_000, 30, 3, 4


def image_thumbnails(paths: Sequence, cache_dir: str | Path | None = None, checks=None) -> np.ndarray:
    """Key-independent visual features for the ``visual`` selection: each image area-averaged to an
    8 x 8 RGB thumbnail (layout and colour: what a latent denoiser sees first), as ``uint8`` (the box
    filter's output: nothing is lost). One pass over the images in chunks, ~0.1 ms per small PNG;
    kept for the last dataset (keyed by path, size and mtime), so issuing many copies reads the images
    once. ``checks`` (:class:`tracemark.io.dataset.FileChecks`): thumbnails of unchanged files come from
    the dataset pass recorded in the registry and new ones are recorded there, so a later process
    reads no image either. Beyond :data:`THUMBS_IN_MEMORY` images they go to a file under
    ``cache_dir`` (default ``<home>/cache/thumbnails``), written atomically and reused by later runs,
    mapped read-only."""
    import hashlib
    import os

    h = hashlib.sha256(f"thumbnails/{THUMB}/{len(paths)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\x00{p}\x00{st.st_size}\x00{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    digest = h.hexdigest()
    if _THUMBS.get("digest") == digest:
        return _THUMBS["array"]
    if len(paths) <= THUMBS_IN_MEMORY:
        out = np.zeros((len(paths), THUMB * THUMB * 3), np.uint8)
        known = [checks.thumb(p) if checks is not None else None for p in paths]
        missing = [i for i, t in enumerate(known) if t is None or len(t) != out.shape[1]]
        for i, t in enumerate(known):
            if t is not None and len(t) == out.shape[1]:
                out[i] = np.frombuffer(t, np.uint8)
        if missing:
            part = np.zeros((len(missing), out.shape[1]), np.uint8)
            _fill_thumbnails([paths[i] for i in missing], part)
            out[missing] = part
            if checks is not None:
                for i, row in zip(missing, part):
                    checks.update(paths[i], thumb=row.tobytes())
    else:
        from tracemark.registry.database import default_home

        folder = Path(cache_dir) if cache_dir is not None else default_home() / "cache" / "thumbnails"
        path = folder / f"{digest}.npy"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{digest}.{os.getpid()}.tmp.npy"
            try:
                mm = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(paths), THUMB * THUMB * 3))
                _fill_thumbnails(paths, mm)
                mm.flush()
                del mm
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        out = np.load(path, mmap_mode="r")
        if out.shape != (len(paths), THUMB * THUMB * 3) or out.dtype != np.uint8:
            raise TracemarkError(f"{path}: a damaged thumbnail cache; delete it")
    out.setflags(write=False)
    _THUMBS.clear()
    _THUMBS.update(digest=digest, array=out)
    return out


_THUMBS: dict = {}


def _fill_thumbnails(paths: Sequence, out: np.ndarray) -> None:
    """Write the thumbnails of ``paths`` into ``out`` a chunk at a time (a memmap stays paged out)."""
    from PIL import Image

    buf = np.zeros((_CHUNK, out.shape[1]), np.uint8)
    for start in range(0, len(paths), _CHUNK):
        part = paths[start:start + _CHUNK]
        for i, p in enumerate(part):
            try:
                with Image.open(p) as im:
                    im.draft("RGB", (THUMB * 4, THUMB * 4))  # JPEG: decode at reduced size
                    buf[i] = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BOX)).ravel()
            except (OSError, ValueError, SyntaxError):
                # an unreadable image gets a blank thumbnail (the same at issue and at materialize); the
                # writing stage decodes every image and reports it (error, or skipped with --on-error skip)
                buf[i] = 0
        out[start:start + len(part)] = buf[:len(part)]


@lru_cache(maxsize=2)
def _visual_labels(features: bytes, n: int, k: int) -> np.ndarray:
    """Version 1: dense PCA to 32 dims and scipy's k-means (kept: copies issued with it re-derive)."""
    from scipy.cluster.vq import kmeans2

    X = np.frombuffer(features, np.float32).reshape(n, -1).astype(np.float64)
    X = X - X.mean(axis=0)
    u, s, vt = np.linalg.svd(X, full_matrices=False)  # PCA to 32 dims: k-means on 192 noisy dims is slow and unstable
    Z = u[:, :32] * s[:32]
    _, labels = kmeans2(Z, k, seed=0, minit="++", iter=30)
    labels.setflags(write=False)
    return labels


def _projection(thumbs: np.ndarray) -> np.ndarray:
    """Version 2: the thumbnails' top principal directions as an integer matrix (192 x 32, scaled by
    :data:`_W_SCALE`). The covariance is summed from integers in chunks, so it is exact whatever the
    order; signs are fixed (largest entry positive); rounding to integers makes everything after it
    exact integer arithmetic."""
    d = thumbs.shape[1]
    S, s = np.zeros((d, d)), np.zeros(d)
    for start in range(0, len(thumbs), _CHUNK):
        x = np.asarray(thumbs[start:start + _CHUNK], np.float64)
        S += x.T @ x  # integer-valued sums < 2^53: exact in float64, in any summation order
        s += x.sum(axis=0)
    n = max(1, len(thumbs))
    cov = S / n - np.outer(s / n, s / n)
    w, V = np.linalg.eigh(cov)
    V = V[:, ::-1][:, :min(_PCA_DIMS, d)]
    V *= np.where(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])] < 0, -1.0, 1.0)
    return np.rint(V * _W_SCALE)


def _project(thumbs: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Integer PCA coordinates of every thumbnail, computed in chunks, stored as int16 (64 bytes per
    image): |x @ W| <= 255 * sum|W| < 2^20, so the products are exact and // 32 fits int16."""
    Z = np.empty((len(thumbs), W.shape[1]), np.int16)
    for start in range(0, len(thumbs), _CHUNK):
        z = np.asarray(thumbs[start:start + _CHUNK], np.float64) @ W
        Z[start:start + len(z)] = np.floor_divide(z, _Z_SHIFT)
    return Z


def _nearest(Z: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of the nearest centre of each row, in chunks, and the sum of squared distances. Rows
    and centres are integers < 2^15, so ``|c|^2 - 2 z.c`` is exact in float64 (< 2^40) and the
    argmin (first on ties) is the same on every machine, BLAS and thread count."""
    labels = np.empty(len(Z), np.int32)
    cc = (C * C).sum(axis=1)
    total = 0
    for start in range(0, len(Z), _CHUNK):
        z = Z[start:start + _CHUNK].astype(np.float64)
        d = cc - 2.0 * (z @ C.T)
        lab = np.argmin(d, axis=1)
        labels[start:start + len(z)] = lab
        total += int((d[np.arange(len(z)), lab] + (z * z).sum(axis=1)).astype(np.int64).sum())
    return labels, total


def _centres(Z: np.ndarray, labels: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Integer means of each cluster (exact integer sums); an empty cluster keeps its centre."""
    k = len(C)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros_like(C)
    for start in range(0, len(Z), _CHUNK):
        z, lab = Z[start:start + _CHUNK], labels[start:start + _CHUNK]
        for j in range(Z.shape[1]):
            sums[:, j] += np.bincount(lab, weights=z[:, j], minlength=k)
    new = C.copy()
    full = counts > 0
    new[full] = np.rint(sums[full] / counts[full, None])
    return new


def _kmeans_pp(Z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with integer D^2 weights (exact) and the seeded generator."""
    Zf = Z.astype(np.float64)
    zz = (Zf * Zf).sum(axis=1)
    C = np.empty((k, Z.shape[1]))
    C[0] = Zf[rng.integers(len(Z))]
    d2 = zz - 2.0 * Zf @ C[0] + C[0] @ C[0]
    for j in range(1, k):
        cum = np.cumsum(np.maximum(d2, 0).astype(np.int64))
        if cum[-1] <= 0:
            C[j:] = C[0]
            break
        C[j] = Zf[min(int(np.searchsorted(cum, rng.integers(cum[-1]), side="right")), len(Z) - 1)]
        d2 = np.minimum(d2, zz - 2.0 * Zf @ C[j] + C[j] @ C[j])
    return C


def _visual_labels_v2(thumbs: np.ndarray, k: int) -> np.ndarray:
    """Version 2: k-means of the integer PCA coordinates, in memory bounded by 64 bytes a sample
    plus fixed-size chunks: k-means++ and Lloyd on a seeded subsample of :data:`_SUBSAMPLE` rows,
    then up to :data:`_FULL_PASSES` streaming Lloyd passes over all rows. Key-independent (every
    copy of a dataset shares the clusters) and exact integer arithmetic throughout, so a copy
    re-derives bit for bit. Cached per thumbnails' content and ``k``."""
    import hashlib

    h = hashlib.sha256(f"{thumbs.shape}/{k}".encode())
    for start in range(0, len(thumbs), _CHUNK * 16):
        h.update(np.ascontiguousarray(thumbs[start:start + _CHUNK * 16], np.uint8).data)
    tag = h.digest()
    if (hit := _LABELS_V2.get(tag)) is not None:
        return hit
    n = len(thumbs)
    Z = _project(thumbs, _projection(thumbs))
    rng = np.random.default_rng(0)
    m = max(_SUBSAMPLE, 20 * k)
    sub = Z if n <= m else Z[np.sort(rng.choice(n, m, replace=False))]
    best = None
    for _ in range(_N_INIT):  # the seeding decides much of k-means' result: keep the best of a few
        C = _kmeans_pp(sub, min(k, len(sub)), rng)
        labels, inertia = None, 0
        for _ in range(_SUB_ITERS):
            new, inertia = _nearest(sub, C)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            C = _centres(sub, labels, C)
        if best is None or inertia < best[0]:
            best = (inertia, C)
    C = best[1]
    labels, _ = _nearest(Z, C)
    if sub is not Z:
        for _ in range(_FULL_PASSES):
            C = _centres(Z, labels, C)
            new, _ = _nearest(Z, C)
            if np.array_equal(new, labels):
                break
            labels = new
    labels.setflags(write=False)
    if len(_LABELS_V2) >= 2:
        _LABELS_V2.pop(next(iter(_LABELS_V2)))
    _LABELS_V2[tag] = labels
    return labels


_LABELS_V2: dict = {}


def _whole_clusters(key: Key, sample_ids: Sequence[str], labels: np.ndarray, n: int) -> list[str]:
    """``n`` samples: whole clusters only, in keyed order (a look-alike left unmarked would teach the
    model the unmarked version of the concept); the last one is cut by keyed hash only when no
    whole cluster fits. Only the chosen clusters' members are hashed."""
    sizes = np.bincount(labels)
    order = sorted(np.flatnonzero(sizes).tolist(), key=lambda c: key.uniform("cluster", str(c)))

    def members(c: int) -> list[int]:
        return sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: key.uniform("select", sample_ids[i]))

    chosen: list[int] = []
    whole: set[int] = set()
    for c in order:
        if sizes[c] <= n - len(chosen):
            chosen += members(c)
            whole.add(c)
    for c in order:
        if len(chosen) >= n:
            break
        if c not in whole:
            chosen += members(c)[:n - len(chosen)]
    return [sample_ids[i] for i in chosen]


def select_visual(key: Key, sample_ids: Sequence[str], thumbnails: np.ndarray, rate: float, *,
                  selection_version: int | None = None) -> list[str]:
    """Like :func:`select_cluster`, with the concept a k-means cluster of the *images* (8 x 8
    thumbnails, :func:`image_thumbnails`) instead of the captions: the marked samples look alike
    (background, colour, layout), so the denoiser can tell them from the rest and learn the mark in
    full for them instead of ``rate`` x the mark on average (docs/research/learnability_log.md).
    ``selection_version``: the clustering (:data:`SELECTION_VERSION`); ``None`` for a copy that
    recorded none (version 1 up to :data:`MAX_CONCEPT_SAMPLES` samples, version 2 beyond)."""
    n = max(1, int(round(check_rate(rate) * len(sample_ids))))
    thumbnails = np.asarray(thumbnails)  # a memmap stays mapped
    if thumbnails.ndim != 2 or thumbnails.shape[0] != len(sample_ids):
        raise ValueError("one thumbnail per sample")
    version = selection_version if selection_version is not None else (
        1 if len(sample_ids) <= MAX_CONCEPT_SAMPLES else 2)
    if version not in SELECTION_VERSIONS:
        raise TracemarkError(f"selection version {selection_version!r} is not one this tracemark knows "
                             f"({', '.join(map(str, SELECTION_VERSIONS))}); upgrade tracemark")
    k = max(1, min(round(VISUAL_SPLIT / rate), len(sample_ids)))
    if version == 1:
        if len(sample_ids) > MAX_CONCEPT_SAMPLES:
            raise TracemarkError(f"selection version 1 builds dense per-sample vectors: at most "
                                 f"{MAX_CONCEPT_SAMPLES:,} samples (this dataset has {len(sample_ids):,})")
        thumbs = np.ascontiguousarray(thumbnails, np.float32)
        labels = _visual_labels(thumbs.tobytes(), len(sample_ids), k)
    else:
        if thumbnails.dtype != np.uint8:  # e.g. float thumbnails of 0..255: exact integers are needed
            if not (np.all(np.rint(thumbnails) == thumbnails) and thumbnails.min() >= 0 and thumbnails.max() <= 255):
                raise ValueError("thumbnails must be whole numbers in 0..255")
            thumbnails = thumbnails.astype(np.uint8)
        labels = _visual_labels_v2(thumbnails, k)
    return _whole_clusters(key, sample_ids, labels, n)


def select_samples(key: Key, sample_ids: Sequence[str], captions: Sequence[str], rate: float,
                   selection: str = "random", thumbnails=None, *, selection_version: int | None = None) -> list[str]:
    """The samples a copy marks, by ``selection`` (``random``, ``coherent``, ``cluster`` or
    ``visual``). ``thumbnails``: for ``visual``, the :func:`image_thumbnails` of the samples, or a
    function returning them (called only when needed). ``selection_version``: see
    :func:`select_visual` (the other selections have one version)."""
    if selection == "random":
        return select_marked(key, sample_ids, rate)
    if selection in ("coherent", "cluster") and len(sample_ids) > MAX_CONCEPT_SAMPLES:
        raise TracemarkError(f"selection {selection} is experimental and builds dense per-sample vectors: at most "
                             f"{MAX_CONCEPT_SAMPLES:,} samples (this dataset has {len(sample_ids):,}); use random "
                             "or visual", params=("selection",))
    if selection == "coherent":
        return select_coherent(key, sample_ids, captions, rate)
    if selection == "cluster":
        return select_cluster(key, sample_ids, captions, rate)
    if selection == "visual":
        if thumbnails is None:
            raise TracemarkError("selection visual needs the images' thumbnails", params=("selection",))
        return select_visual(key, sample_ids, thumbnails() if callable(thumbnails) else thumbnails, rate,
                             selection_version=selection_version)
    raise TracemarkError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}", params=("selection",))
