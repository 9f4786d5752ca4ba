"""Named image attacks with parameter grids, for robustness evaluations (reusable by users).

Each attack maps an RGB float32 array (H x W x 3, 0..255) to another; ``ATTACKS[name](image,
param)`` applies one, ``GRIDS[name]`` lists the parameters the evaluations sweep. Pillow and
scipy only, so attacks run anywhere the package does.

*Copy-level* attacks see the whole copy at once, as an abuser holding it does:
``COPY_ATTACKS[name](images, param)`` maps a list of images to a list (``COPY_GRIDS`` the sweep).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def jpeg(x: np.ndarray, quality: float) -> np.ndarray:
    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=int(quality))
    return _arr(Image.open(buf))


def resize(x: np.ndarray, factor: float) -> np.ndarray:
    im = _pil(x)
    w, h = max(8, round(im.width * factor)), max(8, round(im.height * factor))
    return _arr(im.resize((w, h), Image.Resampling.BICUBIC))


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _arr(_pil(x).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def noise(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sigma, size=x.shape), 0, 255).astype(np.float32)


def crop(x: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central ``1 - fraction`` of each side (no resize back)."""
    h, w = x.shape[:2]
    dh, dw = int(round(h * fraction / 2)), int(round(w * fraction / 2))
    return x[dh:h - dh or None, dw:w - dw or None].copy()


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    return _arr(_pil(x).rotate(float(degrees), resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))


def color_jitter(x: np.ndarray, amount: float) -> np.ndarray:
    """Brightness and contrast both scaled by (1 + amount), saturation by (1 - amount)."""
    im = _pil(x)
    im = ImageEnhance.Brightness(im).enhance(1 + amount)
    im = ImageEnhance.Contrast(im).enhance(1 + amount)
    im = ImageEnhance.Color(im).enhance(1 - amount)
    return _arr(im)


def identity(x: np.ndarray, _: float = 0.0) -> np.ndarray:
    return x


ATTACKS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "none": identity,
    "jpeg": jpeg,
    "resize": resize,
    "blur": blur,
    "noise": noise,
    "crop": crop,
    "rotate": rotate,
    "color_jitter": color_jitter,
}

GRIDS: dict[str, list[float]] = {
    "none": [0.0],
    "jpeg": [90, 75, 50, 30],
    "resize": [0.5, 0.75, 0.9, 1.1, 1.5],
    "blur": [0.5, 1.0, 2.0],
    "noise": [2.0, 5.0, 10.0],
    "crop": [0.05, 0.1, 0.2],
    "rotate": [1.0, 5.0],
    "color_jitter": [0.1, 0.3],
}


def apply(name: str, x: np.ndarray, param: float) -> np.ndarray:
    try:
        fn = ATTACKS[name]
    except KeyError:
        from tracemark.errors import TracemarkError

        raise TracemarkError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}") from None
    return fn(np.asarray(x, dtype=np.float32), param)


# --- copy-level attacks -----------------------------------------------------------------------

def _highpass(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return x - gaussian_filter(x, sigma=(sigma, sigma, 0))


def average_removal(images: list[np.ndarray], threshold: float = 4.0, rounds: int = 2) -> list[np.ndarray]:
    """Estimate a pattern shared by some images of the copy and subtract it from them.

    The attack on any fixed-pattern mark (one pattern per copy, added to its marked images): the
    mean of the images' high-pass residuals holds ``rate x pattern`` above content that averages
    out; images whose residual correlates with that mean beyond ``threshold`` robust z-scores
    (median / MAD over the copy) are taken as the marked ones, the pattern is re-estimated from them
    alone (``rounds`` times) and subtracted from them. Images of other sizes than the most common
    one are passed through. Needs no key; costs the abuser one pass over the copy.
    """
    from collections import Counter

    arrs = [np.asarray(x, np.float32) for x in images]
    shape = Counter(a.shape for a in arrs).most_common(1)[0][0]
    idx = [i for i, a in enumerate(arrs) if a.shape == shape]
    R = np.stack([_highpass(arrs[i]) for i in idx]).reshape(len(idx), -1)
    R -= R.mean(axis=1, keepdims=True)
    Rn = R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-9)
    est = R.mean(axis=0)
    chosen = np.zeros(len(idx), bool)
    for _ in range(max(1, int(rounds))):
        score = Rn @ (est / max(np.linalg.norm(est), 1e-9))
        med = np.median(score)
        mad = np.median(np.abs(score - med)) * 1.4826 + 1e-12
        chosen = (score - med) / mad > threshold
        if not chosen.any():
            return [a.copy() for a in arrs]
        est = R[chosen].mean(axis=0)
    out = [a.copy() for a in arrs]
    pattern = est.reshape(shape)
    for j in np.flatnonzero(chosen):
        out[idx[j]] = np.clip(arrs[idx[j]] - pattern, 0, 255)
    return out


COPY_ATTACKS: dict[str, Callable[[list[np.ndarray], float], list[np.ndarray]]] = {
    "average_removal": average_removal,
}

COPY_GRIDS: dict[str, list[float]] = {
    "average_removal": [3.0, 4.0, 6.0],
}
