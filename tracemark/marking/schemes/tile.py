"""``tile``: one keyed tile repeated over the image in a uniform grid of blocks (DiffusionShield-style).

Why a repeated tile: a fine-tuned denoiser is a convolutional network over a latent grid. A
pattern that is the same in every block is a *local, translation-repeated* signal: the network can
both produce it and recognise a faint trace of it in a noisy input with local filters, where a
full-frame random pattern (``spread``) must be memorised position by position. DiffusionShield
(Cui et al., 2023) reports that such uniform blockwise marks are learned before content.
The detector folds the image into its blocks and averages them, which keeps the tile and averages
natural content down by the number of blocks.

Geometry (normalised, so resizing the image does not move the mark): the image is resized to a
``tiles * grid`` square canvas; the key's ``grid x grid x 3`` tile, built from signed DCT
coefficients in ``band`` (even horizontal frequencies: horizontal flips keep it, as in ``spread``),
is repeated ``tiles x tiles`` times. ``tiles`` should put one block at several latent pixels of
the model's autoencoder (SD: 512 px / 4 tiles = 128 px = 16 latent pixels).

Strength: RMS of the added pattern in 0..255 units (default 3.0, PSNR about 38.6 dB).
"""

from __future__ import annotations

import numpy as np

from tracemark.marking.schemes.spread import SpreadScheme, to_grid


class TileScheme(SpreadScheme):
    name = "tile"
    default_strength = 3.0

    def __init__(self, strength: float | None = None, grid: int = 8, tiles: int = 4,
                 band: tuple[float, float] = (1.0, 4.5), flip_invariant: bool = True) -> None:
        from tracemark.errors import TracemarkError

        self.tiles = int(tiles)
        if not 2 <= self.tiles <= 64:
            raise TracemarkError(f"tile scheme: tiles must be in 2..64, got {tiles}")
        super().__init__(strength, grid=grid, band=band, flip_invariant=flip_invariant)
        if self.canvas > 1024:
            raise TracemarkError(f"tile scheme: tiles x grid must be at most 1024, got {self.canvas}")

    def params(self) -> dict:
        return {**super().params(), "tiles": self.tiles}

    @property
    def canvas(self) -> int:
        return self.tiles * self.grid

    def _grid_pattern(self, pat: np.ndarray) -> np.ndarray:
        return np.tile(pat, (self.tiles, self.tiles, 1))

    def _grid_image(self, image: np.ndarray) -> np.ndarray:
        """Average of the image's blocks: the tile stays, content averages down."""
        g, t = self.grid, self.tiles
        canvas = to_grid(image, self.canvas)
        return canvas.reshape(t, g, t, g, -1).mean(axis=(0, 2))
