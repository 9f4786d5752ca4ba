"""``spectral``: a keyed spectral equaliser. Each key raises the image's energy at half of a band of
spatial frequencies and lowers it at the other half; the detector reads the image's power spectrum.

Why a second-order mark: a fine-tuned model that cannot tell the marked samples from the others
(the trigger does not bind; docs/research/learnability_log.md) learns the *average* of its data. A fixed additive
pattern (``spread``, ``tile``) then survives as ``rate x pattern`` in the mean, whose energy is
``rate^2`` of the mark's. A change of the data's *power spectrum* survives as ``rate x`` the change
(a mixture's second moment is the mixture of the second moments), and a stationary spectral gain is
the easiest thing a convolutional denoiser represents: a linear, shift-invariant filter. The
detector needs no phase, so it is blind to flips and to where content sits; a crop, though,
rescales the image-relative frequencies and scrambles the key's fine sign pattern (as it does for
``spread``'s), so train-time center crops of non-square images weaken it. Spectral statistics of
generations are CoprGuard's (CVPR 2025) audit signal; here the key chooses which frequencies move
which way, so decoy keys give the null.

Geometry (normalised, so resizing does not move the mark): DCT frequency index ``(u, v)`` means
``u/2`` cycles per image height and ``v/2`` per width at any resolution. The key assigns a sign to
every frequency with radius in ``band`` (fractions of ``grid``). Embedding multiplies each such
DCT coefficient of the full-resolution image by ``1 + a * sign`` (all three channels alike); ``a``
is set per image so that the change has RMS ``strength`` (0..255 units), capped at ``max_gain``.
Detection: DCT of the image area-resized to ``grid x grid``; per frequency the log power averaged
over channels, minus its radial mean (a smooth spectrum carries no key); correlate with the signs.
For random signs the statistic is N(0, 1) whatever the images, as for every correlation scheme.

``grid`` is the resolution the mark is defined on: it should not exceed the images' size (the 32-px
CPU world uses 32; SD's 512 px images suit 128, the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.fft import dctn, idctn

from tracemark.marking.schemes.base import Scheme, SignKeyed
from tracemark.marking.schemes.spread import to_grid
from tracemark.registry.keys import Key

DOMAIN = "scheme/spectral/signs"


@lru_cache(maxsize=8)
def radial_band(grid: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask of the grid's DCT indices with lo <= radius / grid <= hi, and their rounded radius."""
    u, v = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    r = np.sqrt(u * u + v * v)
    mask = (r >= lo * grid) & (r <= hi * grid)
    return mask, np.rint(r[mask]).astype(int)


class SpectralScheme(SignKeyed, Scheme):
    name = "spectral"
    sign_domain = DOMAIN
    kind = "correlation"
    default_strength = 2.0  # RMS of the change, 0..255 units: about 42 dB (3.0: 38.6 dB but SSIM 0.977)
    max_strength = 16.0

    def __init__(self, strength: float | None = None, grid: int = 128, band: tuple[float, float] = (0.12, 0.6),
                 max_gain: float = 0.9) -> None:
        super().__init__(strength)
        from tracemark.errors import TracemarkError

        self.grid = int(grid)
        if not 8 <= self.grid <= 1024:
            raise TracemarkError(f"spectral scheme: grid must be in 8..1024, got {grid}")
        if len(band) != 2 or not 0 <= float(band[0]) < float(band[1]) <= 1.5:
            raise TracemarkError(f"spectral scheme: band must be [lo, hi] fractions of the grid, 0 <= lo < hi <= 1.5, got {band}")
        if not 0 < float(max_gain) < 1:
            raise TracemarkError(f"spectral scheme: max_gain must be in (0, 1), got {max_gain}")
        self.band = (float(band[0]), float(band[1]))
        self.max_gain = float(max_gain)
        self._mask, self._radius = radial_band(self.grid, *self.band)
        self.dim = int(self._mask.sum())
        if self.dim < 16:
            raise TracemarkError(f"spectral scheme: band {list(self.band)} of grid {self.grid} holds fewer than 16 frequencies")
        self._sign_cache: dict[str, np.ndarray] = {}

    def params(self) -> dict:
        return {**super().params(), "grid": self.grid, "band": list(self.band), "max_gain": self.max_gain}

    # key side -------------------------------------------------------------------------------
    def sign_grid(self, key: Key) -> np.ndarray:
        """grid x grid array: the key's sign at each band frequency, 0 elsewhere."""
        s = self._sign_cache.get(key.key_id)
        if s is None:
            if len(self._sign_cache) > 64:
                self._sign_cache.clear()
            s = np.zeros((self.grid, self.grid), np.float32)
            s[self._mask] = self.key_vectors([key])[0]
            self._sign_cache[key.key_id] = s
        return s

    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        h, w = image.shape[:2]
        signs = self.sign_grid(key)[: min(h, self.grid), : min(w, self.grid)]
        coeffs = dctn(image.astype(np.float64), axes=(0, 1), norm="ortho")
        hh, ww = signs.shape
        moved = coeffs[:hh, :ww] * signs[..., None]  # the change at gain 1
        energy = float((moved**2).sum())
        if energy <= 0:
            return image.copy()
        # orthonormal DCT: pixel MSE of the change = energy * a^2 / (h * w * 3)
        gain = min(self.max_gain, self.strength * np.sqrt(h * w * image.shape[2] / energy))
        coeffs[:hh, :ww] += gain * moved
        return idctn(coeffs, axes=(0, 1), norm="ortho").astype(np.float32)

    # image side -----------------------------------------------------------------------------
    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), self.dim))
        nbins = int(self._radius.max()) + 1
        count = np.maximum(np.bincount(self._radius, minlength=nbins), 1)
        for i, im in enumerate(images):
            g = to_grid(np.asarray(im, dtype=np.float32), self.grid)
            power = (dctn(g.astype(np.float64), axes=(0, 1), norm="ortho")[self._mask] ** 2).mean(axis=1)  # B
            logp = np.log(power + 1e-3 * power.mean() + 1e-12)
            radial = np.bincount(self._radius, weights=logp, minlength=nbins) / count
            out[i] = logp - radial[self._radius]
        return out
