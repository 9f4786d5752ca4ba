"""``spread``: a keyed spread-spectrum pattern in a low-to-mid DCT band (the default scheme).

Why this band: the pattern lives on a canonical ``grid x grid`` (32 x 32) version of the image,
in DCT frequencies between ``band[0]`` and ``band[1]`` (radius in DCT index units, i.e. half
cycles per image). Defined in normalised image coordinates, it survives resizing, JPEG and blur
(which remove high frequencies), diffusion autoencoders (which keep low frequencies), and it is
the kind of uniform, repeated, low-frequency signal generators are known to learn early. The
detector whitens each image's band coefficients by its own radial power spectrum, so natural
content (strong at low frequencies) does not drown the mark.

Strength: RMS of the added pattern in 0..255 units (the scheme's own default 2.0, about 42 dB;
``protect`` uses 3.15, >= 38 dB on the written files).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy.fft import dctn, idctn

from tracemark.marking.schemes.base import Scheme, SignKeyed
from tracemark.registry.keys import Key

DOMAIN = "scheme/spread/signs"


def resize_float(channel: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize one float32 channel (H x W) to (width, height) with Pillow."""
    im = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    return np.asarray(im.resize(size, resample), dtype=np.float32)


def to_grid(image: np.ndarray, grid: int) -> np.ndarray:
    """Area-average an H x W x 3 image down (or bicubic up) to grid x grid x 3."""
    h, w = image.shape[:2]
    if (h, w) == (grid, grid):
        return image.astype(np.float32, copy=False)
    if h % grid == 0 and w % grid == 0:
        return image.reshape(grid, h // grid, grid, w // grid, -1).mean(axis=(1, 3)).astype(np.float32)
    resample = Image.Resampling.BOX if min(h, w) >= grid else Image.Resampling.BICUBIC
    return np.stack([resize_float(image[..., c], (grid, grid), resample) for c in range(image.shape[2])], axis=-1)


@lru_cache(maxsize=8)
def band_mask(grid: int, lo: float, hi: float, flip_invariant: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices of DCT coefficients with lo <= radius <= hi, and their radius (rounded).

    ``flip_invariant``: keep only even horizontal frequencies. A horizontal flip multiplies the
    DCT-II coefficient of column frequency k by (-1)^k, so a pattern on even k is unchanged by
    the random flips of the standard fine-tuning recipe (odd-k components would average out).
    """
    u, v = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    r = np.sqrt(u * u + v * v)
    mask = (r >= lo) & (r <= hi)
    if flip_invariant:
        mask &= v % 2 == 0
    return mask, np.rint(r[mask]).astype(int)


#: Non-blind detection (:meth:`SpreadScheme.residual_features`) subtracts an image's original only
#: where the fitted original explains at least this fraction of the image's variance on the grid
#: (a mark or a re-encode leaves well under 1% unexplained; a crop or a flip-and-shift far more).
RESIDUAL_EXPLAINED = 0.9


def _fit_residual(image: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``image - (a * original + b)`` per channel, a and b by least squares (grid x grid x 3)."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        x, y = original[..., c].ravel(), image[..., c].ravel()
        xc = x - x.mean()
        den = float(xc @ xc)
        a = float(xc @ (y - y.mean())) / den if den > 1e-9 else 0.0
        out[..., c] = (y - y.mean() - a * xc).reshape(image.shape[:2])
    return out


class SpreadScheme(SignKeyed, Scheme):
    name = "spread"
    sign_domain = DOMAIN
    kind = "correlation"
    default_strength = 2.0
    max_strength = 16.0  # RMS 16/255: about 24 dB

    def __init__(self, strength: float | None = None, grid: int = 32, band: tuple[float, float] = (3.0, 16.0),
                 flip_invariant: bool = True) -> None:
        super().__init__(strength)
        from tracemark.errors import TracemarkError

        self.grid = int(grid)
        if not 8 <= self.grid <= 256:
            raise TracemarkError(f"{self.name} scheme: grid must be in 8..256, got {grid}")
        if len(band) != 2 or not 0 <= float(band[0]) < float(band[1]) <= self.grid * 1.5:
            raise TracemarkError(f"{self.name} scheme: band must be [lo, hi] with 0 <= lo < hi <= {self.grid * 1.5:g}, got {band}")
        self.band = (float(band[0]), float(band[1]))
        self.flip_invariant = bool(flip_invariant)
        self._mask, self._radius = band_mask(self.grid, *self.band, self.flip_invariant)
        if self._mask.sum() < 8:
            raise TracemarkError(f"{self.name} scheme: band {list(self.band)} holds fewer than 8 coefficients")
        self.dim = 3 * int(self._mask.sum())
        self._pattern_cache: dict[tuple[str, int, int], np.ndarray] = {}

    def params(self) -> dict:
        return {**super().params(), "grid": self.grid, "band": list(self.band), "flip_invariant": self.flip_invariant}

    # key side -------------------------------------------------------------------------------
    @property
    def canvas(self) -> int:
        """Side of the canonical image the pattern is defined on (the grid; tiled schemes: more)."""
        return self.grid

    def _grid_pattern(self, pat: np.ndarray) -> np.ndarray:
        """The key's grid x grid pattern laid out on the canvas (here: the identity)."""
        return pat

    def _grid_image(self, image: np.ndarray) -> np.ndarray:
        """An image reduced to the grid x grid x 3 array whose band the detector reads."""
        return to_grid(image, self.grid)

    def pattern(self, key: Key, height: int | None = None, width: int | None = None) -> np.ndarray:
        """Unit-RMS spatial pattern (canvas x canvas x 3, or resized to height x width)."""
        signs = self.key_vectors([key])[0].reshape(3, -1)
        coeffs = np.zeros((3, self.grid, self.grid))
        coeffs[:, self._mask] = signs
        pat = np.stack([idctn(coeffs[c], norm="ortho") for c in range(3)], axis=-1).astype(np.float32)
        pat = self._grid_pattern(pat)
        pat /= np.sqrt((pat**2).mean())
        if height is None or (height, width) == (self.canvas, self.canvas):
            return pat
        up = np.stack([resize_float(pat[..., c], (width, height)) for c in range(3)], axis=-1)
        return up / np.sqrt((up**2).mean())

    def _cached(self, key: Key, h: int, w: int) -> np.ndarray:
        cache_key = (key.key_id, h, w)
        pat = self._pattern_cache.get(cache_key)
        if pat is None:
            if len(self._pattern_cache) > 64:
                self._pattern_cache.clear()
            pat = self._pattern_cache[cache_key] = self.pattern(key, h, w)
        return pat

    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        h, w = image.shape[:2]
        return image.astype(np.float32) + self.strength * self._cached(key, h, w)

    def additive_pattern(self, key: Key, height: int, width: int) -> np.ndarray:
        """The pattern at this strength, rounded to int16 (what :meth:`embed_uint8` adds)."""
        ck = ("q", key.key_id, height, width)
        q = self._pattern_cache.get(ck)
        if q is None:
            q = self._pattern_cache[ck] = np.rint(self.strength * self._cached(key, height, width)).astype(np.int16)
        return q

    def embed_uint8(self, image: np.ndarray, key: Key) -> np.ndarray:
        """Fast path for protect: add the pattern pre-rounded to int16, clip once."""
        out = image.astype(np.int16)
        out += self.additive_pattern(key, *image.shape[:2])
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)

    # image side -----------------------------------------------------------------------------
    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._grid_features([self._grid_image(np.asarray(im, dtype=np.float32)) for im in images])

    def _grid_features(self, grids: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(grids), self.dim))
        nbins = int(self._radius.max()) + 1
        for i, g in enumerate(grids):
            coeffs = np.stack([dctn(g[..., c], norm="ortho")[self._mask] for c in range(3)])  # 3 x B
            # whiten by the image's own radial power spectrum (key-independent, so the null holds)
            power = np.bincount(np.tile(self._radius, 3), weights=coeffs.ravel() ** 2, minlength=nbins)
            count = np.bincount(np.tile(self._radius, 3), minlength=nbins)
            sigma2 = power / np.maximum(count, 1)
            out[i] = (coeffs / np.maximum(sigma2[self._radius], 1e-6)[None, :]).ravel()
        return out

    def residual_features(self, images: Sequence[np.ndarray], originals: Sequence[np.ndarray],
                          explained: float = RESIDUAL_EXPLAINED) -> tuple[np.ndarray, np.ndarray]:
        """Features of each image minus its original (non-blind detection), and which images used it.

        On the grid, the original (as is, mirrored, or in grey) is fitted to the image per channel
        (gain and offset: a re-save, a tone change) and subtracted, so the image's content, which a
        key can happen to align with, is gone and what is left is the mark and the damage. An image
        the original does not explain to ``explained`` of its variance (a crop, a heavy edit) keeps
        its own features. Nothing here reads a key, so the null is unchanged."""
        grids, used = [], np.zeros(len(images), dtype=bool)
        for i, (im, orig) in enumerate(zip(images, originals)):
            gl = self._grid_image(np.asarray(im, dtype=np.float32)).astype(np.float64)
            o = np.asarray(orig, dtype=np.float32)
            best = None
            for cand in (o, o[:, ::-1]):
                go = self._grid_image(np.ascontiguousarray(cand)).astype(np.float64)
                luma = go @ np.array([0.299, 0.587, 0.114])  # what a grey conversion (Pillow's "L") keeps
                for g in (go, np.repeat(luma[..., None], 3, axis=-1)):
                    res = _fit_residual(gl, g)
                    e = float((res ** 2).sum())
                    if best is None or e < best[0]:
                        best = (e, res)
            var = float(((gl - gl.mean(axis=(0, 1))) ** 2).sum())
            if best is not None and var > 0 and best[0] <= (1.0 - explained) * var:
                grids.append(best[1])
                used[i] = True
            else:
                grids.append(gl)
        return self._grid_features(grids), used
