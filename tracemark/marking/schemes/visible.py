"""``visible``: a keyed visible block pattern in a keyed corner (the easy-to-learn upper bound).

Why: the shared probes showed a visible corner patch is what a tiny fine-tuned model learns
first; it is the reference point for what the invisible schemes should approach. The key picks
the corner and the signs of a ``cells x cells`` grid of cells; on the canonical 32 x 32 grid each
cell is one pixel, so the patch covers ``cells / 32`` of the image side (default 8: a quarter).

Why ``cells`` is a parameter: the audit statistic aggregated over many generations converges to
``sqrt(cells**2) * cos(learned patch, key)`` (docs/research/results.md, power), so a model that learns the
patch equally well gives a z proportional to ``cells``. ``cells=16`` (a quadrant) quadruples the
number of key cells at the price of more visible area (PSNR 32.9 -> about 27 dB on marked images).

Strength: amplitude of each cell in 0..255 units (default 24).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.marking.schemes.base import Scheme
from tracemark.marking.schemes.spread import to_grid
from tracemark.registry.keys import Key

DOMAIN = "scheme/visible"
CELLS = 8  # default cells per patch side
GRID = 32  # canonical grid: one pixel per cell there


class VisibleScheme(Scheme):
    name = "visible"
    kind = "correlation"
    default_strength = 24.0
    max_strength = 128.0

    def __init__(self, strength: float | None = None, cells: int = CELLS) -> None:
        super().__init__(strength)
        if not 1 <= int(cells) <= GRID // 2:
            raise TracemarkError(f"visible scheme: cells must be in 1..{GRID // 2} (got {cells})")
        self.cells = int(cells)
        self.dim = 4 * self.cells * self.cells

    def params(self) -> dict:
        return {**super().params(), "cells": self.cells}

    def _corner_and_signs(self, key: Key) -> tuple[int, np.ndarray]:
        rng = key.rng(DOMAIN)
        corner = int(rng.integers(0, 4))
        signs = rng.integers(0, 2, size=(self.cells, self.cells)).astype(np.float64) * 2 - 1
        return corner, signs

    def key_vectors(self, keys: Sequence[Key]) -> np.ndarray:
        out = np.zeros((len(keys), self.dim))
        c2 = self.cells * self.cells
        for i, k in enumerate(keys):
            corner, signs = self._corner_and_signs(k)
            out[i, corner * c2:(corner + 1) * c2] = signs.ravel()
        return out

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.zeros((n, self.dim))
        corners = rng.integers(0, 4, size=n)
        c2 = self.cells * self.cells
        signs = rng.integers(0, 2, size=(n, c2)).astype(np.float64) * 2 - 1
        for c in range(4):
            sel = corners == c
            out[sel, c * c2:(c + 1) * c2] = signs[sel]
        return out

    def _slices(self, corner: int, h: int, w: int) -> tuple[slice, slice]:
        ph, pw = max(1, round(h * self.cells / GRID)), max(1, round(w * self.cells / GRID))
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
        c2 = self.cells * self.cells
        for i, im in enumerate(images):
            g = to_grid(np.asarray(im, dtype=np.float32), GRID).mean(axis=2)
            for c in range(4):
                rows, cols = self._slices(c, GRID, GRID)
                patch = g[rows, cols]
                out[i, c * c2:(c + 1) * c2] = (patch - patch.mean()).ravel()
        return out
