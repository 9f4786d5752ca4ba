"""``color``: a keyed, position-free colour remap. Each key moves every pixel by a smooth function of
the pixel's own colour (a small keyed perturbation of the colour lookup table); where a pixel sits in
the image plays no part.

Why: the field's most common fine-tune, a LoRA on the UNet's attention projections (diffusers'
``train_text_to_image_lora.py``, DreamBooth-LoRA), does not learn a fixed spatial pattern: attention
projections are per-position linear maps and the UNet's transformer blocks carry no positional
encoding, so a pattern tied to pixel positions reaches the output only through the convolutions that
recipe freezes (docs/learnability.md). A change that is the same function of content at every
position is what such a map represents: a trigger word's value vector, added wherever the image
attends to it, shifts colours; a LoRA on ``to_out`` maps the local colour to a correction. A
colour-only change is also what survives the abuser's cheap countermeasures: JPEG keeps colour (its
loss is high-frequency), resizing and cropping do not move it, a VAE round trip reproduces it.

Geometry: a pixel's colour ``c`` in [0, 1]^3 is read through a separable basis of ``grid`` Gaussian
bumps per axis (normalised per axis, so the ``grid^3`` products sum to one: a partition of unity, and
the change is a smooth function of colour). The key gives one sign per (output channel, basis
function): ``D = 3 * grid^3`` signs. The change of a pixel in channel ``o`` is
``a * sum_j sign[o, j] * phi_j(c)``, with ``a`` set per image so that the change has RMS ``strength``
(0..255 units; 3.2 is about 38 dB PSNR), capped at ``max_gain`` times the strength.

Detection is *paired*: the features of a direction ``d`` (a leaked file minus its original, or the
white box's loss gradient) at the original ``x`` are ``F[o, j] = sum_p d_o(p) * phi_j(x(p))``, so
``<F, signs>`` is the direction's projection on the key's change at that image. For random signs the
per-image z is standard normal whatever the images, as for every correlation scheme. Read blind
(without the original), the features are the image's own colour statistics, which carry no key:
this scheme is for white-box audits and leaked files traced with their originals, not for the
black box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracemark.io.imaging import cover_crop_array
from tracemark.marking.schemes.base import Scheme, SignKeyed
from tracemark.registry.keys import Key

DOMAIN = "scheme/color/signs"
#: Pixels handled at once (bounds the per-axis basis arrays' memory at any image size).
_CHUNK = 1 << 16


class ColorScheme(SignKeyed, Scheme):
    name = "color"
    sign_domain = DOMAIN
    kind = "correlation"
    default_strength = 3.2  # RMS of the change, 0..255 units: about 38 dB PSNR
    max_strength = 16.0
    needs_originals = True

    def __init__(self, strength: float | None = None, grid: int = 4, width: float = 0.6,
                 max_gain: float = 4.0) -> None:
        super().__init__(strength)
        from tracemark.errors import TracemarkError

        self.grid = int(grid)
        if not 2 <= self.grid <= 8:
            raise TracemarkError(f"color scheme: grid must be in 2..8 bumps per colour axis, got {grid}")
        if not 0.2 <= float(width) <= 2.0:
            raise TracemarkError(f"color scheme: width must be in [0.2, 2] bump spacings, got {width}")
        if not 1.0 <= float(max_gain) <= 16.0:
            raise TracemarkError(f"color scheme: max_gain must be in [1, 16], got {max_gain}")
        self.width = float(width)
        self.max_gain = float(max_gain)
        self.dim = 3 * self.grid ** 3
        self._centres = np.linspace(0.0, 1.0, self.grid, dtype=np.float32)
        self._sigma = np.float32(self.width / (self.grid - 1))
        self._sign_cache: dict[str, np.ndarray] = {}

    def params(self) -> dict:
        return {**super().params(), "grid": self.grid, "width": self.width, "max_gain": self.max_gain}

    # key side -------------------------------------------------------------------------------
    def _signs(self, key: Key) -> np.ndarray:
        """The key's signs as (3 output channels, grid, grid, grid) float32."""
        s = self._sign_cache.get(key.key_id)
        if s is None:
            if len(self._sign_cache) > 64:
                self._sign_cache.clear()
            g = self.grid
            s = self.key_vectors([key])[0].astype(np.float32).reshape(3, g, g, g)
            self._sign_cache[key.key_id] = s
        return s

    # basis ----------------------------------------------------------------------------------
    def _axis_basis(self, values: np.ndarray) -> np.ndarray:
        """(n,) values in 0..255 -> (n, grid) Gaussian bumps, each row summing to one."""
        t = np.asarray(values, dtype=np.float32) / np.float32(255.0)
        b = np.exp(-0.5 * ((t[:, None] - self._centres[None, :]) / self._sigma) ** 2)
        return b / b.sum(axis=1, keepdims=True)

    def change(self, image: np.ndarray, key: Key) -> np.ndarray:
        """The key's change at unit gain: H x W x 3 float32, a function of each pixel's colour."""
        image = np.asarray(image, dtype=np.float32)
        pix = image.reshape(-1, 3)
        signs = self._signs(key)
        out = np.empty((len(pix), 3), np.float32)
        for start in range(0, len(pix), _CHUNK):
            p = pix[start:start + _CHUNK]
            a, b, c = (self._axis_basis(p[:, i]) for i in range(3))
            t = np.einsum("nw,ouvw->nouv", c, signs, optimize=True)
            t = np.einsum("nv,nouv->nou", b, t, optimize=True)
            out[start:start + len(p)] = np.einsum("nu,nou->no", a, t, optimize=True)
        return out.reshape(image.shape)

    # embedding ------------------------------------------------------------------------------
    def embed(self, image: np.ndarray, key: Key) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        delta = self.change(image, key)
        rms = float(np.sqrt(np.mean(delta.astype(np.float64) ** 2)))
        if rms <= 0:
            return image.copy()
        gain = min(self.strength / rms, self.max_gain * self.strength)
        return image + np.float32(gain) * delta

    # image side -----------------------------------------------------------------------------
    def direction_features(self, directions: Sequence[np.ndarray], originals: Sequence[np.ndarray]) -> np.ndarray:
        """``F[o, j] = sum_p d_o(p) phi_j(x(p))`` per direction ``d`` at its original ``x`` (resized to
        ``d``'s size as the trainers do: :func:`tracemark.io.imaging.cover_crop`)."""
        g = self.grid
        out = np.zeros((len(directions), self.dim))
        for i, (d, x) in enumerate(zip(directions, originals)):
            d = np.asarray(d, dtype=np.float32)
            x = cover_crop_array(np.asarray(x, dtype=np.float32), d.shape[1], d.shape[0])
            dd = d.reshape(-1, 3).astype(np.float64)
            px = x.reshape(-1, 3)
            acc = np.zeros((3, g, g, g))
            for start in range(0, len(px), _CHUNK):
                p, q = px[start:start + _CHUNK], dd[start:start + _CHUNK]
                a, b, c = (self._axis_basis(p[:, k]).astype(np.float64) for k in range(3))
                acc += np.einsum("no,nu,nv,nw->ouvw", q, a, b, c, optimize=True)
            out[i] = acc.reshape(-1)
        return out

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Blind: each image's own colour statistics (centred per channel) read as a direction at
        itself. They carry no key (the null holds), and no mark either: see the module's note."""
        cent = [np.asarray(im, dtype=np.float32) - np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]
        return self.direction_features(cent, images)

    def residual_features(self, images: Sequence[np.ndarray], originals: Sequence[np.ndarray]):
        """Each image minus its original (resized to the image), where the original explains the
        image (a re-save, a resize: the residual's RMS under half the image's own variation)."""
        dirs, ats, used = [], [], np.zeros(len(images), dtype=bool)
        for i, (im, orig) in enumerate(zip(images, originals)):
            im = np.asarray(im, dtype=np.float32)
            o = cover_crop_array(np.asarray(orig, dtype=np.float32), im.shape[1], im.shape[0])
            d = im - o
            spread = float(np.std(im))
            used[i] = spread > 0 and float(np.sqrt(np.mean(d * d))) < 0.5 * spread
            dirs.append(d if used[i] else im - im.mean(axis=(0, 1)))
            ats.append(o if used[i] else im)
        return self.direction_features(dirs, ats), used
