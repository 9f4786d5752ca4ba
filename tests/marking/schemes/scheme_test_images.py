"""Test images and edits shared by the scheme tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tracemark.marking.schemes.base import clip_uint8


def natural(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """1/f-spectrum RGB test image, float32 0..255."""
    f = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    f[0, 0] = 1
    chans = []
    for _ in range(3):
        x = np.real(np.fft.ifft2((rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / f**0.9))
        chans.append((x - x.mean()) / x.std() * 50 + 128)
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.float32)


def stored(x: np.ndarray) -> np.ndarray:
    return clip_uint8(x).astype(np.float32)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(clip_uint8(x)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)
