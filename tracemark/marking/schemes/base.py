"""The one small interface every watermark scheme implements.

A scheme splits detection into a *key-independent* part and an *image-independent* part:

* ``features(images) -> F`` with shape ``(n_images, D)``: what the detector reads from an image
  (e.g. whitened band coefficients, soft message bits). Computed once per image.
* ``key_vectors(keys) -> P`` with shape ``(n_keys, D)``: what each key predicts there.

Scoring many images against many keys is then a matrix product, so an audit can test every
issued key and thousands of decoy keys at the cost of one ``F @ P.T``. Two kinds of scheme:

* ``kind = "correlation"``: ``P`` holds signed masks (entries in {-1, 0, +1}, signs from the
  key). The statistic ``z = <m, p> / sqrt(<m^2, p^2>)`` is, for random signs, a sum of
  independent symmetric terms with variance exactly 1: standard normal under "this key was never
  used", whatever the images are. That is the Radioactive-data style test the statistics build on.
* ``kind = "message"``: ``F`` holds soft bits in [-1, 1] and ``P`` the key's message in {-1, +1};
  agreement of hard bits with a uniformly random message is Binomial(L, 1/2) under the null.

Images are float32 arrays ``H x W x 3`` in 0..255 (RGB).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from tracemark.registry.keys import Key


class Scheme(ABC):
    """Base class: embed one image with a key; read features; predict key vectors."""

    name: ClassVar[str]
    kind: ClassVar[str] = "correlation"
    #: Default strength in the scheme's own unit (documented per scheme).
    default_strength: ClassVar[float]
    #: Largest accepted strength: beyond it the "watermark" destroys the image.
    max_strength: ClassVar[float] = 64.0
    #: True where the mark is a function of the image (``color``): detection then pairs each
    #: direction with its original (:meth:`direction_features`), and blind features carry no mark.
    needs_originals: ClassVar[bool] = False

    def __init__(self, strength: float | None = None) -> None:
        import math

        from tracemark.errors import TracemarkError

        try:
            value = float(self.default_strength if strength is None else strength)
        except (TypeError, ValueError):
            raise TracemarkError(f"{self.name} scheme: strength must be a number, got {strength!r}",
                                 params=("strength",)) from None
        if not (math.isfinite(value) and 0 < value <= self.max_strength):
            raise TracemarkError(f"{self.name} scheme: strength must be in (0, {self.max_strength:g}], got {strength}",
                                 params=("strength",))
        self.strength = value

    # --- embedding -------------------------------------------------------------------------
    @abstractmethod
    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        """Return the marked image (float32, same shape, unclipped; the caller rounds/clips)."""

    def embed_uint8(self, image: np.ndarray, key: Key) -> np.ndarray:
        """Mark a uint8 H x W x 3 image and return uint8 (schemes may override with a faster path)."""
        return clip_uint8(self.embed(image.astype(np.float32), key))

    def additive_pattern(self, key: Key, height: int, width: int) -> np.ndarray | None:
        """The mark as a fixed pixel difference (int16 H x W x 3, before clipping) when it is one:
        the same for every image of this size, so a writer may compute its encoding once
        (:func:`tracemark.io.jpegdct.write_pattern_jpeg`). ``None``: the mark depends on the image."""
        return None

    def embed_batch(self, images: Sequence[np.ndarray], key: Key) -> list[np.ndarray]:
        return [self.embed(im, key) for im in images]

    # --- detection -------------------------------------------------------------------------
    @abstractmethod
    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Key-independent detector features, shape (n_images, D), float64."""

    def direction_features(self, directions: Sequence[np.ndarray], originals: Sequence[np.ndarray]) -> np.ndarray:
        """Features of pixel directions (the white box's loss gradients) taken at their originals.
        A fixed pattern does not depend on the image, so by default the originals are not read."""
        return self.features(directions)

    def residual_features(self, images: Sequence[np.ndarray], originals: Sequence[np.ndarray]):
        """Non-blind features (each image minus its original) and a mask of the images they were
        taken for; ``None`` where the scheme reads images blind only."""
        return None

    @abstractmethod
    def key_vectors(self, keys: Sequence[Key]) -> np.ndarray:
        """Image-independent key predictions, shape (n_keys, D)."""

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Vectors distributed like ``key_vectors`` of random keys (fast decoys for calibration).

        The default derives real keys from ``rng``; schemes override it with a vectorised draw.
        """
        keys = [Key(rng.bytes(32)) for _ in range(n)]
        return self.key_vectors(keys)

    def score(self, images: Sequence[np.ndarray], keys: Sequence[Key]) -> np.ndarray:
        """Per-image scores, shape (n_images, n_keys).

        correlation: the per-image z statistic (standard normal for a key not in the image);
        message: the fraction of message bits that agree.
        """
        return per_image_scores(self.features(images), self.key_vectors(keys), self.kind)

    def params(self) -> dict:
        """Parameters recorded in the registry so a copy can be re-scored exactly."""
        return {"scheme": self.name, "strength": self.strength}


class SignKeyed:
    """Key vectors of +-1 signs, one per feature: ``sign_domain`` (the PRF domain the signs are drawn
    in, one per scheme, so that two schemes never share signs) and ``dim``. Mixed into the
    correlation schemes whose key is a sign pattern (``spread``, ``spectral``, ``color``)."""

    sign_domain: ClassVar[str]
    dim: int

    def key_vectors(self, keys: Sequence[Key]) -> np.ndarray:
        from tracemark.registry.keys import sign_matrix

        return sign_matrix(list(keys), self.sign_domain, self.dim) if keys else np.zeros((0, self.dim))

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 2, size=(n, self.dim), dtype=np.int8).astype(np.float64) * 2 - 1


def clip_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


#: Floor of a vector norm (as in :mod:`tracemark.detection.stats`).
EPS = 1e-12


def per_image_scores(F: np.ndarray, P: np.ndarray, kind: str) -> np.ndarray:
    """(n_images, n_keys) per-image z (correlation) or bit-agreement fraction (message)."""
    F = np.asarray(F, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    if kind == "message":
        bits = np.sign(F)
        agree = (bits @ P.T + np.abs(bits) @ np.abs(P).T) / 2.0
        return agree / np.maximum(np.abs(bits).sum(axis=1, keepdims=True), 1.0)
    num = F @ P.T
    den = np.sqrt((F * F) @ (P * P).T)
    return num / np.maximum(den, EPS)
