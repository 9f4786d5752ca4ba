"""Mark a JPEG in its DCT-coefficient domain: no decode / re-encode generation loss.

Re-encoding a small, noisy JPEG at its own quality costs down to ~32 dB by itself, more than the
mark (measured: 64 px q90 files fell to 35.8 dB after a 42 dB mark). Instead the mark's pixel
difference is converted to YCbCr (JFIF), subsampled like the file's chroma, transformed by the
same orthonormal 8x8 DCT JPEG uses, divided by the file's quantisation tables, rounded, and added
to the file's own quantised coefficients (read and written with ``jpeglib``, libjpeg's coefficient
API). Unmarked content is bit-identical in the coefficient domain, and the file keeps its
structure: libjpeg writes the scan with optimised Huffman tables exactly when the source's were
optimised, and the scan is spliced into the source's own marker segments (APPn, COM, DQT, SOF:
:func:`tracemark.io.imaging.splice_jpeg`), so a marked file shows the source's layout byte for byte
up to its Huffman tables and scan. Progressive files and files with restart markers (libjpeg's
coefficient writer here does neither) are left to the caller's re-encoding.

Two writers (a copy records which one issued it, so it re-derives bit for bit):

* 1 (:func:`write_marked_jpeg`): any pixel difference, e.g. the clipped one of a decoded image.
* 2 (:func:`write_pattern_jpeg`): a scheme whose mark is a fixed additive pattern (the default
  ``spread``) adds it unclipped, so its coefficient step depends only on the key, the image size and
  the file's tables and sampling: it is computed once per such group and added to every file of it
  (the decoder clamps to 0..255, as the clipping did).

The harm is still measured by decoding what was written: the coefficient change predicts the pixel
error only up to the decoder's rounding, clamping and chroma upsampling, which on small real photos
put the prediction 0.5-1.4 dB off (docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from scipy.fft import dctn

_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                      [-0.168736, -0.331264, 0.5],
                      [0.5, -0.418688, -0.081312]])

#: The writer new copies are issued with (see the module docstring).
JPEG_WRITER = 2
#: libjpeg build used for coefficient I/O: libjpeg-turbo's entropy coder writes the same bytes as
#: libjpeg 6b (checked by the tests) at about 1.3x its speed.
_LIBJPEG = "turbo210"
#: Coefficient steps kept per process (one per key, size, tables and sampling).
_STEP_CACHE_SIZE = 32
_STEPS: dict[tuple, list[np.ndarray]] = {}


def available() -> bool:
    try:
        import jpeglib  # noqa: F401
    except ImportError:  # pragma: no cover - jpeglib is a pinned dependency
        return False
    return True


def _jpeglib():
    import jpeglib

    if jpeglib.version.get() != _LIBJPEG:
        jpeglib.version.set(_LIBJPEG)
    return jpeglib


def _blocks(plane: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """An (H, W) plane zero-padded to (8 bh, 8 bw), as (bh, bw, 8, 8) blocks."""
    out = np.zeros((bh * 8, bw * 8))
    h, w = min(plane.shape[0], bh * 8), min(plane.shape[1], bw * 8)
    out[:h, :w] = plane[:h, :w]
    return out.reshape(bh, 8, bw, 8).transpose(0, 2, 1, 3)


def _subsample(plane: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Box-average by (fy, fx), what libjpeg's default downsampling does."""
    if fy == 1 and fx == 1:
        return plane
    h, w = plane.shape[0] // fy * fy, plane.shape[1] // fx * fx
    p = plane[:h, :w].reshape(h // fy, fy, w // fx, fx)
    if fy == 2 and fx == 2:  # 4:2:0: numpy's own order for mean(axis=(1, 3)), bit for bit, at a quarter the cost
        return ((p[:, 0, :, 0] + p[:, 0, :, 1]) + (p[:, 1, :, 0] + p[:, 1, :, 1])) / 4
    return p.mean(axis=(1, 3))


def _open(src: str | Path, source: bytes):
    """The file's coefficients, or None for what the coefficient writer cannot write back."""
    from tracemark.io.imaging import jpeg_segments

    try:
        markers = {m for m, _ in jpeg_segments(source)}
    except ValueError:
        return None
    # progressive files: jpeglib 1.0.2 writes baseline only; restart markers: it drops them; only
    # Huffman-coded sequential frames (SOF0 / SOF1) are written back as what they were
    if 0xDD in markers or not markers & {0xC0, 0xC1} or markers & {0xC2, 0xC3, 0xC9, 0xCA, 0xCB}:
        return None
    jpeg = _jpeglib().read_dct(str(src))
    if (jpeg.has_black or jpeg.num_components not in (1, 3) or jpeg.progressive_mode
            or int(jpeg.jpeg_color_space) != (3 if jpeg.num_components == 3 else 1)):  # RGB-coded JPEGs
        _free(jpeg)
        return None
    samp = np.asarray(jpeg.samp_factor)
    if any(samp[:, 0].max() % samp[c, 0] or samp[:, 1].max() % samp[c, 1] for c in range(jpeg.num_components)):
        _free(jpeg)
        return None
    return jpeg


def _free(jpeg) -> None:
    if hasattr(jpeg, "free"):
        jpeg.free()


def _components(jpeg) -> list[np.ndarray]:
    return [jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.num_components == 3 else [])


def _factors(jpeg, c: int) -> tuple[int, int]:
    samp = np.asarray(jpeg.samp_factor)
    return int(samp[:, 0].max() // samp[c, 0]), int(samp[:, 1].max() // samp[c, 1])


def _table(jpeg, c: int) -> np.ndarray:
    return np.asarray(jpeg.qt[jpeg.quant_tbl_no[c]], dtype=np.float64)


def _steps(jpeg, delta_rgb: np.ndarray) -> list[np.ndarray]:
    """Each component's quantised coefficient change for a pixel difference (H x W x 3)."""
    ycc = np.asarray(delta_rgb, dtype=np.float64) @ _TO_YCBCR.T  # deltas: no level shift
    planes = [ycc[..., 0]] if jpeg.num_components == 1 else [ycc[..., c] for c in range(3)]
    out = []
    for c, (plane, coef) in enumerate(zip(planes, _components(jpeg))):
        bh, bw = coef.shape[:2]
        blocks = _blocks(_subsample(plane, *_factors(jpeg, c)), bh, bw)
        out.append(np.rint(dctn(blocks, axes=(2, 3), norm="ortho") / _table(jpeg, c)).astype(np.int32))
    return out


def _write(jpeg, steps: list[np.ndarray], source: bytes, dst: str | Path) -> None:
    from tracemark.io.imaging import jpeg_huffman_is_standard, write_jpeg_spliced

    new = [np.add(coef, step, dtype=np.int32).clip(-32768, 32767).astype(coef.dtype)
           for coef, step in zip(_components(jpeg), steps)]
    jpeg.Y = new[0]
    if len(new) == 3:
        jpeg.Cb, jpeg.Cr = new[1], new[2]
    jpeg.write_dct(str(dst), flags=["-OPTIMIZE_CODING" if jpeg_huffman_is_standard(source) else "+OPTIMIZE_CODING"])
    write_jpeg_spliced(source, Path(dst).read_bytes(), Path(dst))


def write_marked_jpeg(src: str | Path, dst: str | Path, delta_rgb: np.ndarray) -> bool:
    """Writer 1: write ``src`` plus the pixel difference ``delta_rgb`` (H x W x 3, 0..255 units) to
    ``dst`` in the DCT domain, with the source's structure. Returns False (nothing written) for files
    it does not handle (CMYK, RGB-coded, progressive, restart markers, arithmetic coding, unusual
    sampling), so the caller falls back to decode / re-encode."""
    source = Path(src).read_bytes()
    jpeg = _open(src, source)
    if jpeg is None:
        return False
    try:
        _write(jpeg, _steps(jpeg, delta_rgb), source, dst)
        return True
    finally:
        _free(jpeg)


def write_pattern_jpeg(src: str | Path, dst: str | Path, pattern: Callable[[int, int], np.ndarray],
                       pattern_id: tuple) -> bool:
    """Writer 2: write ``src`` plus a fixed additive pattern, ``pattern(height, width)`` (int16
    H x W x 3, 0..255 units, unclipped), in the DCT domain; ``pattern_id`` names it (key and scheme)
    for the cache of coefficient steps. Returns False (nothing written) for a file the coefficient
    writer does not handle."""
    source = Path(src).read_bytes()
    jpeg = _open(src, source)
    if jpeg is None:
        return False
    try:
        comps = _components(jpeg)
        geometry = (int(jpeg.height), int(jpeg.width), tuple(c.shape for c in comps),
                    tuple(_factors(jpeg, c) for c in range(len(comps))),
                    tuple(_table(jpeg, c).astype(np.int32).tobytes() for c in range(len(comps))))
        cache_key = (pattern_id, geometry)
        steps = _STEPS.get(cache_key)
        if steps is None:
            steps = _steps(jpeg, pattern(int(jpeg.height), int(jpeg.width)))
            if len(_STEPS) >= _STEP_CACHE_SIZE:
                _STEPS.pop(next(iter(_STEPS)))
            _STEPS[cache_key] = steps
        _write(jpeg, steps, source, dst)
        return True
    finally:
        _free(jpeg)
