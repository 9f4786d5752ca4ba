"""The DCT-domain JPEG writers: the fixed-pattern writer (2) against the pixel-difference writer
(1), and the libjpeg build they use."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from tracemark.io import jpegdct
from tracemark.marking.schemes import get_scheme
from tracemark.registry.keys import Key


def _jpeg(path, arr, **kw):
    Image.fromarray(arr).save(path, "JPEG", **kw)
    return path


def _photo(seed, size=64, lo=0, hi=255):
    from tracemark.evaluation.samples import pink_noise

    arr = pink_noise(size, size, np.random.default_rng(seed))
    return np.clip(lo + (arr - arr.min()) / (np.ptp(arr) + 1e-9) * (hi - lo), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kw", [{"quality": 90}, {"quality": 75, "subsampling": 0, "optimize": True}])
def test_the_turbo_build_writes_the_bytes_libjpeg_6b_writes(tmp_path, kw):
    """Copies issued with libjpeg 6b re-derive bit for bit with the faster libjpeg-turbo build."""
    import jpeglib

    src = _jpeg(tmp_path / "a.jpg", _photo(1, 80), **kw)
    out = {}
    for build in ("6b", jpegdct._LIBJPEG):
        jpeglib.version.set(build)
        jpeg = jpeglib.read_dct(str(src))
        jpeg.Y = jpeg.Y  # load and write back
        jpeg.write_dct(str(tmp_path / f"{build}.jpg"), flags=["+OPTIMIZE_CODING" if kw.get("optimize") else
                                                                 "-OPTIMIZE_CODING"])
        out[build] = (tmp_path / f"{build}.jpg").read_bytes()
    assert out["6b"] == out[jpegdct._LIBJPEG]


@pytest.mark.parametrize("mode,shape,kw", [("RGB", (72, 72), {}), ("L", (72, 72), {}),
                                           ("RGB", (37, 50), {}), ("RGB", (45, 61), {"subsampling": 0})])
def test_the_pattern_writer_writes_what_the_pixel_writer_writes_where_nothing_clips(tmp_path, mode, shape, kw):
    """Writer 2 adds the pattern unclipped: on an image far from 0 and 255 that is the very same
    coefficient change writer 1 makes from the clipped pixel difference, so the same bytes (odd
    sizes and 4:4:4 too: partial blocks and chroma subsampling go through the same arithmetic)."""
    arr = _photo(2, 72, lo=60, hi=190)[:shape[0], :shape[1]]
    src = tmp_path / "src.jpg"
    Image.fromarray(arr).convert(mode).save(src, "JPEG", quality=90, **kw)
    decoded = np.asarray(Image.open(src).convert("RGB"))
    scheme, key = get_scheme("spread", strength=3.2), Key(b"k" * 32)
    q = scheme.additive_pattern(key, *shape)
    assert q is not None and np.abs(q).max() < 60  # so nothing clips
    marked = scheme.embed_uint8(decoded, key)
    assert np.array_equal(marked.astype(np.int16) - decoded, q)
    assert jpegdct.write_marked_jpeg(src, tmp_path / "w1.jpg", marked.astype(np.float64) - decoded)
    assert jpegdct.write_pattern_jpeg(src, tmp_path / "w2.jpg", lambda h, w: scheme.additive_pattern(key, h, w),
                                      ("k", "spread"))
    assert (tmp_path / "w1.jpg").read_bytes() == (tmp_path / "w2.jpg").read_bytes()


def test_the_pattern_writer_differs_where_pixels_clip_and_caches_per_geometry(tmp_path):
    """On a saturated image the writers differ (writer 2 leaves the clamping to the decoder), so a
    copy must record its writer; the coefficient change is computed once per size and tables."""
    arr = _photo(3, 64)
    arr[:32] = 255  # a white half: the pattern's positive half clips there
    src = _jpeg(tmp_path / "src.jpg", arr, quality=90)
    decoded = np.asarray(Image.open(src).convert("RGB"))
    scheme, key = get_scheme("spread", strength=3.2), Key(b"s" * 32)
    jpegdct._STEPS.clear()
    marked = scheme.embed_uint8(decoded, key)
    assert jpegdct.write_marked_jpeg(src, tmp_path / "w1.jpg", marked.astype(np.float64) - decoded)
    calls = []

    def pattern(h, w):
        calls.append((h, w))
        return scheme.additive_pattern(key, h, w)

    for name in ("w2.jpg", "w2b.jpg"):
        assert jpegdct.write_pattern_jpeg(src, tmp_path / name, pattern, ("s", "spread"))
    assert calls == [(64, 64)]  # the second file of this geometry reuses the step
    assert (tmp_path / "w2.jpg").read_bytes() == (tmp_path / "w2b.jpg").read_bytes()
    assert (tmp_path / "w1.jpg").read_bytes() != (tmp_path / "w2.jpg").read_bytes()
    a, b = (np.asarray(Image.open(tmp_path / n).convert("RGB"), dtype=float) for n in ("w1.jpg", "w2.jpg"))
    assert np.abs(a - b).max() <= 8  # both decode to the same clamped image up to the rounding near 255


def test_the_pattern_writer_leaves_progressive_files_to_the_caller(tmp_path):
    src = _jpeg(tmp_path / "p.jpg", _photo(4), quality=90, progressive=True)
    scheme, key = get_scheme("spread"), Key(b"p" * 32)
    assert not jpegdct.write_pattern_jpeg(src, tmp_path / "o.jpg", lambda h, w: scheme.additive_pattern(key, h, w),
                                          ("p", "spread"))
    assert not (tmp_path / "o.jpg").exists()
