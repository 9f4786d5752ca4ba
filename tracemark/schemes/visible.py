"""``visible``: a keyed visible block pattern in a keyed corner (the easy-to-learn upper bound).

Why: the shared probes showed a visible corner patch is what a tiny fine-tuned model learns
first; it is the reference point for what the invisible schemes should approach. The key picks
the corner and the signs of an 8 x 8 grid of cells covering a quarter of the image side.

Strength: amplitude of each cell in 0..255 units (default 24).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from tracemark.keys import Key
from tracemark.schemes.base import Scheme
from tracemark.schemes.spread import to_grid

DOMAIN = "scheme/visible"
CELLS = 8
GRID = 32  # canonical grid: the patch is 8 x 8 pixels there (one pixel per cell)


class VisibleScheme(Scheme):
    name = "visible"
    kind = "correlation"
    default_strength = 24.0
    dim = 4 * CELLS * CELLS

    def _corner_and_signs(self, key: Key) -> tuple[int, np.ndarray]:
        rng = key.rng(DOMAIN)
        corner = int(rng.integers(0, 4))
        signs = rng.integers(0, 2, size=(CELLS, CELLS)).astype(np.float64) * 2 - 1
        return corner, signs

    def key_vectors(self, keys: Sequence[Key]) -> np.ndarray:
        out = np.zeros((len(keys), self.dim))
        for i, k in enumerate(keys):
            corner, signs = self._corner_and_signs(k)
            out[i, corner * CELLS * CELLS:(corner + 1) * CELLS * CELLS] = signs.ravel()
        return out

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((n, self.dim))
        corners = rng.integers(0, 4, size=n)
        signs = rng.integers(0, 2, size=(n, CELLS * CELLS)).astype(np.float64) * 2 - 1
        for c in range(4):
            sel = corners == c
            out[sel, c * CELLS * CELLS:(c + 1) * CELLS * CELLS] = signs[sel]
        return out

    @staticmethod
    def _slices(corner: int, h: int, w: int) -> tuple[slice, slice]:
        ph, pw = h // 4, w // 4
        rows = slice(0, ph) if corner in (0, 1) else slice(h - ph, h)
        cols = slice(0, pw) if corner in (0, 2) else slice(w - pw, w)
        return rows, cols

    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        h, w = image.shape[:2]
        corner, signs = self._corner_and_signs(key)
        rows, cols = self._slices(corner, h, w)
        ph, pw = rows.stop - rows.start, cols.stop - cols.start
        block = Image.fromarray(signs.astype(np.float32), mode="F").resize((pw, ph), Image.Resampling.NEAREST)
        out = image.astype(np.float32).copy()
        out[rows, cols, :] += self.strength * np.asarray(block)[..., None]
        return out

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), self.dim))
        for i, im in enumerate(images):
            g = to_grid(np.asarray(im, dtype=np.float32), GRID).mean(axis=2)
            for c in range(4):
                rows, cols = self._slices(c, GRID, GRID)
                patch = g[rows, cols]
                out[i, c * CELLS * CELLS:(c + 1) * CELLS * CELLS] = (patch - patch.mean()).ravel()
        return out
