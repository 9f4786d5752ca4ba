"""``warp``: a keyed smooth flow-field warp (DIAGNOSIS-like), with a blind correlation detector.

Embedding (in the manner of DIAGNOSIS, ICLR 2024, which uses WaNet's warp): each image is
resampled at ``(y + dy, x + dx)`` with bilinear interpolation (``scipy.ndimage.map_coordinates``,
reflecting borders), where the displacement field is defined in normalised image coordinates
from key signs on a band of DCT coefficients of a canonical ``grid x grid`` field
(``key.rng("scheme/warp/field")``: one sign per coefficient with radius in ``band`` for ``dx``
and one for ``dy``; DC, a global shift, is excluded). The DCT basis is evaluated analytically at
the pixel centres, so the same key gives the same smooth field at every resolution and aspect.
Default band 2..16 half-cycles per image (wavelengths >= 1/8 of the side: a smooth ripple).

Strength: RMS displacement magnitude ``sqrt(mean(dx^2 + dy^2))`` in pixels *for a 512-pixel
side*; it scales with the image (0.2 means 0.2 px at 512 x 512, 0.0125 px at 32 x 32). A warp's
PSNR depends on the image's gradients far more than an additive mark's does. The default 0.2 is
set by image quality: 36.0-39.1 dB (SSIM 0.988-0.989) on a 512 px portrait photo over 16 keys,
about 34.7 dB on a sharp close-up photo, 54 dB on the smooth 1/f synthetic images. Detection at the
default is weak (see below); 0.5 px gives 48 dB on the synthetic images but about 30 dB on
photos, 1 px (DIAGNOSIS-like) 43 dB and 24.5 dB, although a smooth sub-pixel ripple stays
invisible to the eye. See ``docs/schemes.md`` for the measured table.

Blind detection. A translation of an unknown image cannot be seen in that image alone (its
statistics do not change), so only the field's derivatives are observable. With
``J(x) = I(x + d(x))`` and Jacobian ``A = dd/dx``, the local structure tensor (the gradient's
second moment) is ``S_J = (1 + A)^T S_I (1 + A)``; natural images are isotropic on average
(``E S_I = s 1``), so ``E S_J ~ s (1 + A + A^T)`` and the two scale-free anisotropies of the
structure tensor read the field's strain:

    a1 = (Sxx - Syy) / (Sxx + Syy) ~ d(dx)/dx - d(dy)/dy,    a2 = 2 Sxy / (Sxx + Syy) ~ d(dx)/dy + d(dy)/dx.

They are dimensionless, hence the same at every resolution and after a resize. ``features`` is
the matched filter of the key's coefficients for these maps: for each field coefficient, the
inner product of (a1, a2), measured on a cell grid (about ``cells`` cells over the short side,
gradients of Gaussian ``sigma``), with the strain maps that coefficient alone produces (the
analytic derivatives of its DCT basis function). So ``<features, key signs>`` correlates the
observed strain with the key's predicted strain; features do not depend on the key, key vectors
not on the image, and for a key that was not used ``z = <m,p> / sqrt(<m^2,p^2>)`` is N(0, 1) by
the sign symmetry. Isotropic scaling (divergence) and rotation are not identifiable this way (a
1/f image looks the same scaled or rotated); only the two strain components carry evidence.
Measured alternatives: the first-order estimate ``(g_x r, g_y r)`` (gradient times high-pass
residual, projected on the field basis) gave half the per-image z (1.85 vs 3.81 at 1 px on
synthetic 512 x 512 images) and a third of the aggregated z over 20 images (3.8 vs 12.0);
whitening the features by their radial spectrum and down-weighting coherent (edge) cells did not
help; gradients at ``sigma`` 0.7 beat 1.0 and 2.0; RGB structure tensors did not beat luma.

Measured (20 synthetic 1/f 512 x 512 images, one key): at the default 0.2 px, per-image z 0.7
and aggregated z 3.0 (2.6 after JPEG 75); at 0.5 px 1.9 and 7.5 (6.6); at 1 px 3.8 and 12.0
(10.9); clean images and decoy keys N(0, 1). On photos the per-image signal at the same PSNR is
smaller (isotropy is a worse prior for one photo): this blind detector needs many images or a
stronger warp, and a learned (DIAGNOSIS-style) classifier may do better.

Limits: z is at most ``sqrt(dim)`` (about 20.6 for the default band, dim 424), per image and aggregated,
however many images; and the detector needs the image statistics to be isotropic on average,
which a set of generations of one prompt may not be (decoy keys check the null on those
images).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

from tracemark.marking.schemes.base import Scheme
from tracemark.marking.schemes.spread import band_mask, resize_float
from tracemark.registry.keys import Key

DOMAIN = "scheme/warp/field"
REFERENCE_SIDE = 512.0
LUMA = np.array([0.299, 0.587, 0.114])


@lru_cache(maxsize=64)
def _basis_1d(n: int, freqs: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """cos(pi k t) and its derivative d/dt at the n cell/pixel centres t = (i + 0.5) / n."""
    t = (np.arange(n) + 0.5) / n
    k = np.asarray(freqs, dtype=np.float64)[:, None]
    return np.cos(np.pi * k * t), -np.pi * k * np.sin(np.pi * k * t)


def _grid_cells(h: int, w: int, cells: int) -> tuple[int, int]:
    """Cell grid the structure tensor is averaged on: about ``cells`` cells over the short side."""
    side = min(h, w)
    n = max(4, min(cells, side // 2))
    return max(4, round(n * h / side)), max(4, round(n * w / side))


def _area(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        return x.reshape(size[0], h // size[0], size[1], w // size[1]).mean(axis=(1, 3))
    return resize_float(x.astype(np.float32), (size[1], size[0]), Image.Resampling.BOX).astype(np.float64)


@lru_cache(maxsize=16)
def _strain_basis(grid: int, band: tuple[float, float], ch: int, cw: int) -> tuple[np.ndarray, np.ndarray]:
    """Per band coefficient k: d(phi_k)/dx and d(phi_k)/dy on a ch x cw cell grid, each (K, ch*cw).

    phi_k(y, x) = cos(pi u_k y) cos(pi v_k x) in normalised coordinates; divided by the number of
    cells so the inner products are cell means (the same scale at every cell-grid size).
    """
    mask, _ = band_mask(grid, *band, False)
    u, v = np.nonzero(mask)
    cy, dcy = _basis_1d(ch, tuple(range(grid)))
    cx, dcx = _basis_1d(cw, tuple(range(grid)))
    px = (cy[u][:, :, None] * dcx[v][:, None, :]).reshape(len(u), -1)
    py = (dcy[u][:, :, None] * cx[v][:, None, :]).reshape(len(u), -1)
    return px / (ch * cw), py / (ch * cw)


class WarpScheme(Scheme):
    name = "warp"
    kind = "correlation"
    default_strength = 0.2
    max_strength = 32.0

    def __init__(
        self,
        strength: float | None = None,
        grid: int = 32,
        band: tuple[float, float] = (2.0, 16.0),
        cells: int = 64,
        sigma: float = 0.7,
        order: int = 1,
    ) -> None:
        super().__init__(strength)
        self.grid = int(grid)
        self.band = (float(band[0]), float(band[1]))
        if self.band[0] < 1:
            raise ValueError("the warp band must exclude the DC coefficient (a global shift): band[0] >= 1")
        self.cells = int(cells)
        self.sigma = float(sigma)
        self.order = int(order)
        mask, _ = band_mask(self.grid, *self.band, False)
        self._u, self._v = (a.astype(int) for a in np.nonzero(mask))
        self.n_coeffs = len(self._u)
        self.dim = 2 * self.n_coeffs  # signs for dx, then signs for dy
        self._field_cache: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def params(self) -> dict:
        return {
            **super().params(),
            "grid": self.grid,
            "band": list(self.band),
            "cells": self.cells,
            "sigma": self.sigma,
            "order": self.order,
        }

    # key side -------------------------------------------------------------------------------
    def key_vectors(self, keys: Sequence[Key]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.dim))
        return np.stack([k.rng(DOMAIN).integers(0, 2, size=self.dim).astype(np.float64) * 2 - 1 for k in keys])

    def random_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 2, size=(n, self.dim), dtype=np.int8).astype(np.float64) * 2 - 1

    def _eval(self, coeffs: np.ndarray, h: int, w: int) -> np.ndarray:
        """sum_k coeffs[k] cos(pi u_k y) cos(pi v_k x) on an h x w grid of centres (coeffs: (..., K))."""
        uf, vf = tuple(range(self.grid)), tuple(range(self.grid))
        cy, _ = _basis_1d(h, uf)
        cx, _ = _basis_1d(w, vf)
        c = np.zeros(coeffs.shape[:-1] + (self.grid, self.grid))
        c[..., self._u, self._v] = coeffs
        return np.einsum("...uv,uy,vx->...yx", c, cy, cx, optimize=True)

    def field(self, key: Key, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel displacements (dy, dx), each height x width, RMS magnitude = strength * side / 512."""
        cache_key = (key.key_id, height, width)
        hit = self._field_cache.get(cache_key)
        if hit is not None:
            return hit
        signs = self.key_vectors([key])[0].reshape(2, self.n_coeffs)
        # normalise on the canonical grid so the amplitude is the same at every image size
        canon = self._eval(signs, self.grid, self.grid)
        scale = 1.0 / np.sqrt((canon**2).sum(axis=0).mean())
        dxn, dyn = self._eval(signs, height, width) * scale
        unit = self.strength / REFERENCE_SIDE
        out = (dyn * unit * height, dxn * unit * width)
        if len(self._field_cache) > 64:
            self._field_cache.clear()
        self._field_cache[cache_key] = out
        return out

    # embedding ------------------------------------------------------------------------------
    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        h, w = image.shape[:2]
        dy, dx = self.field(key, h, w)
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        coords = np.stack([yy + dy, xx + dx])
        chans = [
            map_coordinates(image[..., c], coords, order=self.order, mode="reflect", prefilter=self.order > 1)
            for c in range(image.shape[2])
        ]
        return np.stack(chans, axis=-1).astype(np.float32)

    # detection ------------------------------------------------------------------------------
    def strain_maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The anisotropy maps (a1, a2) of the local structure tensor on the cell grid."""
        y = np.asarray(image, dtype=np.float64) @ LUMA
        h, w = y.shape
        gy = gaussian_filter(y, self.sigma, order=(1, 0), mode="reflect")
        gx = gaussian_filter(y, self.sigma, order=(0, 1), mode="reflect")
        size = _grid_cells(h, w, self.cells)
        sxx, syy, sxy = (_area(a, size) for a in (gx * gx, gy * gy, gx * gy))
        tr = sxx + syy
        eps = 1e-3 * max(float(np.median(tr)), 1e-9) + 1e-9
        return (sxx - syy) / (tr + eps), 2.0 * sxy / (tr + eps)

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), self.dim))
        for i, im in enumerate(images):
            a1, a2 = self.strain_maps(im)
            px, py = _strain_basis(self.grid, self.band, *a1.shape)
            a1, a2 = a1.ravel(), a2.ravel()
            out[i] = np.concatenate([px @ a1 + py @ a2, -(py @ a1) + px @ a2])  # matched filter (sx, sy)
        return out
