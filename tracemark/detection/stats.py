"""Statistics: aggregate many images into one test per key, calibrate it with decoy keys.

Why aggregate: a mark a fine-tuned model learned faintly is invisible in one generation but the
noise of image content averages out over n images while the mark adds up (z grows like sqrt(n)).

Why decoy keys: keys that were never issued, scored on exactly the same images, give the null
distribution of exactly the statistic we compute, including whatever correlation the images have
among themselves. For correlation schemes the statistic is standard normal by construction
(see :mod:`tracemark.marking.schemes.base`); decoys check that on the data at hand and refit the
location/scale if the images bend it. The reported p-value is the larger (more conservative) of
the theoretical one and the decoy-fitted one, so a bad fit can only make us more cautious.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

EPS = 1e-12


def _unit_rows(F: np.ndarray) -> np.ndarray:
    norms = np.sqrt((F * F).sum(axis=1, keepdims=True))
    return F / np.maximum(norms, EPS)


def aggregate(F: np.ndarray, kind: str) -> np.ndarray:
    """Pool n images into one vector: unit-normalised sum (correlation) or soft-bit sum (message)."""
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] == 0:
        raise ValueError("need at least one image's features")
    if kind == "message":
        return F.sum(axis=0)
    return _unit_rows(F).sum(axis=0)


def key_statistic(m: np.ndarray, P: np.ndarray, kind: str) -> np.ndarray:
    """The test statistic of each key for a pooled vector ``m``.

    correlation: z = <m, p> / sqrt(<m^2, p^2>)  (N(0,1) under the null).
    message: the number of agreeing hard bits (Binomial(L, 1/2) under the null).
    """
    P = np.asarray(P, dtype=np.float64)
    if kind == "message":
        bits = np.sign(m)
        return ((P * bits[None, :]) > 0).sum(axis=1).astype(np.float64)
    num = P @ m
    den = np.sqrt((P * P) @ (m * m))
    return num / np.maximum(den, EPS)


def theoretical_p(stat: np.ndarray, kind: str, n_bits: int | None = None) -> np.ndarray:
    stat = np.asarray(stat, dtype=np.float64)
    if kind == "message":
        return sps.binom.sf(stat - 1, n_bits, 0.5)
    return sps.norm.sf(stat)


@dataclass
class NullFit:
    """What the decoy keys say about the null distribution on these images."""

    n_decoys: int
    mean: float
    std: float
    ks_p: float  # KS test of decoy statistics against the theoretical null
    values: np.ndarray = field(repr=False)

    def empirical_p(self, stat: np.ndarray) -> np.ndarray:
        """Rank p-value (1 + #decoys >= stat) / (1 + n); exact but floored at 1/(n+1)."""
        stat = np.atleast_1d(stat)
        srt = np.sort(self.values)
        ge = len(srt) - np.searchsorted(srt, stat, side="left")
        return (1.0 + ge) / (1.0 + len(srt))


def fit_null(decoy_stats: np.ndarray, kind: str, n_bits: int | None = None) -> NullFit:
    v = np.asarray(decoy_stats, dtype=np.float64)
    if kind == "message":
        # agreement count vs Binomial(L, 1/2): compare standardised values with N(0, 1)
        # counts are discrete: jitter by U(-1/2, 1/2) (fixed seed) before a continuous KS test
        jitter = np.random.default_rng(0).uniform(-0.5, 0.5, size=v.shape)
        std_v = (v + jitter - n_bits / 2.0) / np.sqrt(n_bits / 4.0 + 1.0 / 12.0)
        ks = sps.kstest(std_v, "norm").pvalue
    else:
        ks = sps.kstest(v, "norm").pvalue
    return NullFit(len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 1.0, float(ks), v)


def calibrated_p(stat: np.ndarray, null: NullFit, kind: str, n_bits: int | None = None) -> np.ndarray:
    """max(theoretical p, p of the decoy-fitted normal): conservative when the fit disagrees.

    For message schemes the exact binomial p is used unless the decoys reject it.
    """
    stat = np.asarray(stat, dtype=np.float64)
    p_theory = theoretical_p(stat, kind, n_bits)
    if kind == "message":
        # the binomial is exact for uniformly random messages; fall back to the conservative
        # max only when the decoys visibly disagree with it (KS p < 1e-3)
        if null.ks_p >= 1e-3:
            return p_theory
        p_fit = sps.norm.sf((stat - 0.5 - null.mean) / max(null.std, EPS))
    else:
        p_fit = sps.norm.sf((stat - null.mean) / max(null.std, EPS))
    return np.maximum(p_theory, p_fit)


def holm(pvals: np.ndarray, family: int | None = None) -> np.ndarray:
    """Holm step-down adjusted p-values (controls the family-wise error over licensees).

    ``family``: the size of the family the tested hypotheses were *selected* from (at least
    ``len(pvals)``); the untested ones count with p = 1. Needed when a data-dependent selection
    chose which keys to test (the audit's stage 2), because the selection is not independent of
    the test there."""
    p = np.asarray(pvals, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    size = max(m, family or 0)
    order = np.argsort(p)
    adj_sorted = np.maximum.accumulate(np.minimum(1.0, (size - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for a rate (used to report false-positive rates honestly)."""
    a = 1 - level
    lo = 0.0 if k == 0 else sps.beta.ppf(a / 2, k, n - k + 1)
    hi = 1.0 if k == n else sps.beta.ppf(1 - a / 2, k + 1, n - k)
    return float(lo), float(hi)


@dataclass
class KeyTest:
    """Result of testing keys on a set of images."""

    stat: np.ndarray
    p_theory: np.ndarray
    p_value: np.ndarray
    p_empirical: np.ndarray
    p_holm: np.ndarray
    null: NullFit


#: Share of the feature dimensions given to the content subspace (see :func:`content_basis`).
CONTENT_SHARE = 0.2


def content_basis(F_content: np.ndarray, share: float = CONTENT_SHARE) -> np.ndarray:
    """Orthonormal basis (k x D) of the directions a dataset's own content occupies in feature space:
    the top right singular vectors of its unit-normalised per-image features (uncentred, so the mean
    is in it), ``k = share * D``.

    Why: pooled features of images of one domain (or of a model's residuals on them) share a strong
    content structure. A key's statistic is N(0, 1) over the random draw of the key, but a given
    issued key may by chance align with that fixed structure (measured: one key in 100,000 at
    z = 4.8 on raw face images of a dataset it never marked) and then be accused by every innocent
    model of the domain. Removing the content subspace from the pooled vector before testing keeps
    the null exact (the projection is key-independent) and removes that bias; it also removes
    content noise, which raised a learned mark's z from 1.7 to 3.4 in the white-box audit
    (docs/research/learnability_log.md)."""
    U = np.asarray(F_content, dtype=np.float64)
    U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), EPS)
    k = max(1, min(len(U), int(round(share * U.shape[1]))))
    _, _, Vt = np.linalg.svd(U, full_matrices=False)
    return Vt[:k]


def project_out(m: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """``m`` without its component in the span of ``basis`` (rows orthonormal)."""
    if basis is None or len(basis) == 0:
        return m
    return m - basis.T @ (basis @ m)


def test_keys(
    F: np.ndarray,
    P: np.ndarray,
    decoys: np.ndarray,
    kind: str,
    basis: np.ndarray | None = None,
) -> KeyTest:
    """Test every key in ``P`` on the images whose features are ``F`` (decoy-calibrated, Holm);
    correlation schemes with a content ``basis`` test the pooled vector outside that subspace."""
    m = aggregate(F, kind)
    if kind == "correlation":
        m = project_out(m, basis)
    n_bits = P.shape[1] if kind == "message" else None
    stat = key_statistic(m, P, kind)
    null = fit_null(key_statistic(m, decoys, kind), kind, n_bits)
    p_val = calibrated_p(stat, null, kind, n_bits)
    return KeyTest(stat, theoretical_p(stat, kind, n_bits), p_val, null.empirical_p(stat), holm(p_val), null)


def scan_keys(m: np.ndarray, key_vector_chunks, kind: str = "correlation") -> tuple[np.ndarray, int]:
    """Statistic of a pooled vector ``m`` against a stream of key-vector chunks.

    Memory stays bounded by one chunk: used to score images against 100,000+ keys generated on
    the fly (e.g. every licensee key derived from the master, or a large decoy population).
    Returns (statistics, number of keys).
    """
    out = []
    total = 0
    for P in key_vector_chunks:
        out.append(key_statistic(m, P, kind))
        total += len(P)
    return (np.concatenate(out) if out else np.zeros(0)), total
