"""Score images against every issued copy's key: the engine behind ``trace-files`` and ``audit``.

For each issued copy we test "these images carry this copy's mark" with the aggregated,
decoy-calibrated statistic of :mod:`tracemark.detection.stats`, then correct over copies with Holm, so
the chance of naming *any* innocent licensee stays below ``alpha``. All copies that pass are
named (collusion: each colluder's mark survives averaging), not just the top one.

Query with what you know: each leaked file is matched to the one marked sample it is nearest to
(perceptual hash; its file name counts only when the hash agrees), each sample keeps only its
best-matching file (and that file's near-duplicates), and a copy is scored on the files matched to
the samples it marked. The match uses image content and names, never the key, so the null
distribution is unchanged; decoys are scored on the same files as the key they stand in for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tracemark.detection import stats
from tracemark.detection.verdict import CopyScore, Verdict
from tracemark.errors import TracemarkError
from tracemark.io.dataset import content_sample
from tracemark.marking.schemes import get_scheme, scheme_params
from tracemark.registry.database import Copy, Registry


DHASH_MAX_DISTANCE = 6
#: Bits within which a leaked file may match a marked sample. Wider than DHASH_MAX_DISTANCE: on small
#: images with flat backgrounds the mark itself, JPEG or resizing flip up to ~12 of the 64 bits
#: (measured on 64 px faces), and since each file keeps only its nearest sample and each sample only
#: its best file, the look-alikes a wider radius reaches no longer dilute the mark.
MATCH_MAX_DISTANCE = 12
#: Correlation of 16x16 grey thumbnails above which two leaked files are the same image (e.g. two
#: licensees' copies of one sample, or a copy's file and the original): distinct faces of one domain
#: reach 0.96 at the 99.9th percentile, a file and its marked or re-encoded version >= 0.98.
NEAR_DUPLICATE = 0.99
DEFAULT_DECOYS = 1000
DEFAULT_ALPHA = 0.01


def content_for(registry: Registry, copies: Sequence[Copy], data_dir: str | Path | None = None):
    """(content images, their folder) for the content projection: ``data_dir`` when given, else the
    source folder the registry recorded for the copies' dataset when it still exists, else (None, None).

    Any key-independent basis keeps the null exact, so a source that changed since issuing is safe;
    it only helps less."""
    if data_dir is not None:  # the user's --data: its errors are the user's to see
        return content_sample(data_dir), str(data_dir)
    names = {c.dataset for c in copies}
    for row in registry.datasets():
        if row["name"] in names and row["source_path"] and Path(row["source_path"]).is_dir():
            try:
                return content_sample(row["source_path"]), str(row["source_path"])
            except TracemarkError:  # the recorded source changed into something unreadable: go without
                continue
    return None, None


def _hash_margins(image: np.ndarray) -> tuple[int, np.ndarray]:
    """The image's dHash (:func:`tracemark.io.imaging.dhash`, same bits) and, per bit, how far the two
    grey cells it compares are apart: near-ties are the bits a mark, JPEG or resizing flip."""
    from PIL import Image

    g = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("L").resize((9, 8), Image.Resampling.BOX)
    a = np.asarray(g, dtype=np.int16)
    d = (a[:, 1:] - a[:, :-1]).ravel()
    return sum(1 << int(i) for i in np.flatnonzero(d > 0)), np.abs(d).astype(np.float64)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Zero-mean unit-norm 16x16 grey thumbnail: tells two files of one image from two look-alikes."""
    from PIL import Image

    im = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).convert("L").resize((16, 16), Image.Resampling.BOX)
    a = np.asarray(im, dtype=np.float64).ravel()
    a -= a.mean()
    return a / max(float(np.linalg.norm(a)), 1e-9)


def _best_per_sample(img: np.ndarray, sid: np.ndarray, dist: np.ndarray, named: np.ndarray,
                     images: Sequence[np.ndarray] | None) -> np.ndarray:
    """Mask of the (image, sample) pairs kept: for each sample, the files that match it by name and
    hash, else the files nearest to it (margin-weighted hash distance), plus the near-duplicates of those (the same image in
    several licensees' copies, or a copy's file beside the original, each scored for every copy
    that marked the sample). Look-alikes of other images lose to the sample's own file."""
    keep = np.zeros(len(img), dtype=bool)
    thumbs: dict[int, np.ndarray] = {}

    def thumb(k: int) -> np.ndarray:
        if k not in thumbs:
            thumbs[k] = _thumbnail(images[k])
        return thumbs[k]

    order = np.lexsort((img, sid))
    bounds = np.flatnonzero(np.diff(sid[order])) + 1
    for grp in np.split(order, bounds):
        if len(grp) == 1:
            keep[grp] = True
            continue
        best = grp[named[grp]] if named[grp].any() else grp[dist[grp] == dist[grp].min()]
        keep[best] = True
        if len(best) < len(grp) and images is not None:
            W = np.stack([thumb(int(img[j])) for j in best])
            for j in grp:
                if not keep[j] and float((W @ thumb(int(img[j]))).max()) >= NEAR_DUPLICATE:
                    keep[j] = True
    return keep


def _subsets_by_match(copies: Sequence[Copy], names: Sequence[str], hashes: np.ndarray,
                      margins: np.ndarray | None = None,
                      images: Sequence[np.ndarray] | None = None,
                      assigned: dict | None = None) -> dict[int, np.ndarray]:
    """For every copy with marked samples, the indices of the images matched to them (possibly
    none): each image to its best sample (:meth:`SampleTable.match`), each sample to its best file(s)
    (:func:`_best_per_sample`). One pass over each dataset's sample table, then a set-membership
    test per copy: the cost does not grow with copies x marked samples. The match uses image
    content and names, never the key, so the null is unchanged. ``assigned`` (a dict, filled in):
    image index -> (sample table, sample id) of the sample each kept image was matched to."""
    out: dict[int, np.ndarray] = {}
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for copy in copies:
        if copy.samples is None or not len(copy.marked_ids):
            continue
        t = id(copy.samples)
        if t not in pairs:
            img, sid, dist, named = copy.samples.match(list(names), hashes, MATCH_MAX_DISTANCE, margins)
            keep = _best_per_sample(img, sid, dist, named, images) if len(img) else np.zeros(0, dtype=bool)
            pairs[t] = (img[keep], sid[keep])
            if assigned is not None:
                for i, j in zip(pairs[t][0].tolist(), pairs[t][1].tolist()):
                    assigned.setdefault(i, (copy.samples, j))
        img, sid = pairs[t]
        marked = copy.marked_ids  # sorted: a binary search per matched image
        if not len(img):
            out[copy.id] = np.zeros(0, dtype=np.int64)
            continue
        pos = np.minimum(np.searchsorted(marked, sid), len(marked) - 1)
        out[copy.id] = np.unique(img[marked[pos] == sid])
    return out


def _original_pairs(assigned: dict, images: Sequence[np.ndarray], originals: str | Path) -> tuple[list, list]:
    """(image indices, their originals) for the matched images whose original file is readable in
    ``originals``; an original that is missing or unreadable leaves its image to blind scoring."""
    from tracemark.io.dataset import read_image_rgb

    folder = Path(originals)
    idx, origs = [], []
    cache: dict[str, np.ndarray | None] = {}
    for i in sorted(assigned):
        table, sid = assigned[i]
        name = table.file_names[int(table.positions(np.array([sid]))[0])]
        if name not in cache:
            try:
                cache[name] = read_image_rgb(folder / name)
            except (TracemarkError, OSError):
                cache[name] = None
        if cache[name] is not None:
            idx.append(i)
            origs.append(cache[name])
    return idx, origs


#: Fewer decoys than this cannot calibrate a p-value (the fitted null needs a spread to fit).
MIN_DECOYS = 100


def check_test_parameters(alpha: float, n_decoys: int) -> None:
    """One-line errors for statistics parameters that would make a verdict meaningless."""
    import math

    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 < alpha < 1):
        raise TracemarkError(f"alpha must be between 0 and 1 (exclusive), got {alpha}", params=("alpha",))
    if not isinstance(n_decoys, int) or n_decoys < MIN_DECOYS:
        raise TracemarkError(f"n_decoys must be an integer >= {MIN_DECOYS}, got {n_decoys}", params=("n_decoys",))


def score_copies(
    images: Sequence[np.ndarray],
    copies: Sequence[Copy],
    registry: Registry,
    *,
    names: Sequence[str] | None = None,
    match_files: bool = True,
    subsets: dict[int, np.ndarray] | None = None,
    n_decoys: int = DEFAULT_DECOYS,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    family: int | None = None,
    content: Sequence[np.ndarray] | None = None,
    originals: str | Path | None = None,
    at: Sequence[np.ndarray] | None = None,
) -> Verdict:
    """Test every copy's key on ``images`` (decoy-calibrated, Holm over copies, or over a larger
    ``family`` of copies that these were selected from: see :func:`tracemark.detection.stats.holm`).

    ``content``: unmarked images of the dataset (the owner's originals); correlation schemes then
    test outside their content subspace (:func:`tracemark.detection.stats.content_basis`).
    ``originals``: the folder of the original dataset; each file matched to a marked sample is then
    scored as the file minus that sample's original (non-blind, where the scheme can: see
    :meth:`tracemark.marking.schemes.spread.SpreadScheme.residual_features`), so that no key is
    ever scored against the content of the images it marked.
    ``at``: one original per image when ``images`` are directions taken at them (the white box's loss
    gradients): schemes whose mark depends on the image read each direction at its original
    (:meth:`tracemark.marking.schemes.base.Scheme.direction_features`)."""
    check_test_parameters(alpha, n_decoys)
    if not copies:
        raise TracemarkError(f"{registry.db_path}: the registry has no issued copies to test against")
    if len(images) == 0:
        raise TracemarkError("no images to score")
    if at is not None and len(at) != len(images):
        raise TracemarkError(f"{len(images)} images but {len(at)} originals to read them at")
    t0 = time.perf_counter()
    hm = [_hash_margins(im) for im in images] if match_files else []
    hashes = np.array([h for h, _ in hm], dtype=np.uint64)
    margins = np.array([m for _, m in hm]).reshape(len(hm), 64)
    names = list(names) if names is not None else [""] * len(images)
    feats: dict[str, tuple] = {}
    rng = np.random.default_rng(seed)
    rows: list[CopyScore] = []
    nulls = {}
    untested: list[str] = []
    # pass 1: each copy's scheme, key and images; copies that read the same images with the same
    # scheme form one group, tested with one pooled vector, one decoy pass and one key-matrix product
    groups: dict[tuple, list] = {}
    assigned: dict[int, tuple] = {}
    matched = _subsets_by_match(copies, names, hashes, margins, images, assigned) if match_files else {}
    pairs = _original_pairs(assigned, images, originals) if originals is not None and match_files else ([], [])
    n_residual = 0
    warnings: list[str] = []
    if match_files and not any(len(v) for v in matched.values()):
        # nothing to match on: score every image for every copy (calibrated, but weaker), and say so
        matched = {}
        warnings.append(f"none of the {len(images)} images matched a marked sample of any copy (by perceptual "
                        "hash, or by file name where the hash agrees); all were scored for every copy. Files "
                        "that were cropped or heavily edited, or that no copy marked, cannot be tested here.")
    for copy in copies:
        params = scheme_params(copy)
        sig = f"{copy.scheme}:{sorted(params.items())}"
        if sig not in feats:
            sch = get_scheme(copy.scheme, **params)
            paired = getattr(sch, "needs_originals", False)  # a plugin's scheme may predate the flag
            basis = (stats.content_basis(sch.features(content)) if content is not None and len(content)
                     and sch.kind == "correlation" and not paired else None)
            F = sch.direction_features(images, at) if at is not None and paired else sch.features(images)
            if paired and at is None and not pairs[0]:
                warnings.append(f"scheme {sch.name} is read only against the original images (a white-box "
                                "audit, or leaked files with the original data); read blind, its copies "
                                "cannot be detected here")
            res = sch.residual_features([images[i] for i in pairs[0]], pairs[1]) if pairs[0] else None
            if res is not None:
                idx = np.asarray(pairs[0])[res[1]]
                F[idx] = res[0][res[1]]
                n_residual = max(n_residual, len(idx))
            feats[sig] = (sch, F, sch.random_vectors(n_decoys, rng), basis)
        try:
            key = registry.key_for_copy(copy)
        except TracemarkError as exc:  # one bad row must not stop the others from being traced
            untested.append(str(exc))
            continue
        subset = None
        if subsets is not None and copy.id in subsets:
            subset = np.asarray(subsets[copy.id], dtype=int)
        elif match_files:
            subset = matched.get(copy.id)
            if subset is None and matched:  # no marked sample to match: nothing of this copy's to score
                subset = np.zeros(0, dtype=np.int64)
        gkey = (sig, None if subset is None else subset.tobytes())
        groups.setdefault(gkey, []).append((copy, key, subset))
    # pass 2: one test per group
    by_id: dict[int, CopyScore] = {}
    for (sig, _), members in groups.items():
        sch, F, decoys, basis = feats[sig]
        subset = members[0][2]
        Fi = F if subset is None else F[subset]
        if len(Fi) == 0:  # no image was queried for these copies: nothing to test, p = 1
            for copy, _, sub in members:
                by_id[copy.id] = CopyScore(copy.id, copy.dataset, copy.licensee, copy.scheme, copy.strategy, 0.0, 0.0,
                                           1.0, 1.0, 1.0, 0, sub is not None, n_matched=0)
            continue
        P = sch.key_vectors([key for _, key, _ in members])
        res = stats.test_keys(Fi, P, decoys, sch.kind, basis)
        null = {"decoy_mean": res.null.mean, "decoy_std": res.null.std, "ks_p": res.null.ks_p,
                "decoy_values": res.null.values}
        for j, (copy, _, sub) in enumerate(members):
            stat = float(res.stat[j])
            z = (stat - P.shape[1] / 2) / np.sqrt(P.shape[1] / 4) if sch.kind == "message" else stat
            nulls[copy.id] = null
            by_id[copy.id] = CopyScore(copy.id, copy.dataset, copy.licensee, copy.scheme, copy.strategy, stat,
                                       float(z), float(res.p_value[j]), float(res.p_empirical[j]), 1.0, len(Fi),
                                       sub is not None, n_matched=len(matched.get(copy.id, ())))
    rows = [by_id[c.id] for c in copies if c.id in by_id]
    if not rows:
        raise TracemarkError(f"no issued copy could be tested: {untested[0]}")
    # untested copies stay in Holm's family (p = 1): skipping them must not make naming easier
    p_holm = stats.holm(np.array([r.p_value for r in rows]), max(family or 0, len(rows) + len(untested)))
    for r, ph in zip(rows, p_holm):
        r.p_holm = float(ph)
        r.named = bool(ph < alpha)
    named = [r.licensee for r in sorted(rows, key=lambda r: r.p_value) if r.named]
    return Verdict(
        used=bool(named), p_value=float(p_holm.min()), alpha=alpha, n_images=len(images), n_decoys=n_decoys,
        named=named, scores=rows, null=nulls,
        timings={"scoring_s": round(time.perf_counter() - t0, 3), "non_blind_images": n_residual},
        untested=untested, warnings=warnings,
    )
