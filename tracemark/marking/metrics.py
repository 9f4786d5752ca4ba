"""Image-quality metrics reported for marked data (harm to the data): PSNR and SSIM."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _luma(x: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in float32 (0..255 images: float32 keeps SSIM within ~1e-5 of float64 at half the cost)."""
    x = np.asarray(x)
    if x.ndim == 3:
        return x.astype(np.float32, copy=False) @ _LUMA
    return x.astype(np.float32, copy=False)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0, win: int = 7) -> float:
    """Mean SSIM on luminance with a uniform 7x7 window (Wang et al. 2004 constants)."""
    x, y = _luma(a), _luma(b)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = uniform_filter(x, win), uniform_filter(y, win)
    sxx = uniform_filter(x * x, win) - mx * mx
    syy = uniform_filter(y * y, win) - my * my
    sxy = uniform_filter(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean(dtype=np.float64))
