"""tile: one keyed tile repeated over a uniform grid of blocks, read by folding the blocks."""

from __future__ import annotations

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.marking.metrics import psnr, ssim
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes.tile import TileScheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import jpeg, natural, stored

KEY = Key(bytes(range(32)))


@pytest.fixture(scope="module")
def images256() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [natural(256, 256, rng) for _ in range(10)]


def test_registered_and_params_roundtrip():
    s = get_scheme("tile", tiles=8)
    assert isinstance(s, TileScheme) and s.canvas == 64
    p = s.params()
    assert p["tiles"] == 8 and get_scheme("tile", **{k: v for k, v in p.items() if k != "scheme"}).params() == p
    with pytest.raises(TracemarkError, match="tiles"):
        TileScheme(tiles=1)


def test_pattern_repeats_every_block_and_survives_flips():
    s = TileScheme(tiles=4, grid=8)
    pat = s.pattern(KEY)
    assert pat.shape == (32, 32, 3) and np.sqrt((pat**2).mean()) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(pat[:8, :8], pat[8:16, 16:24]) and np.allclose(pat[:8, :8], pat[24:, 8:16])
    # a horizontal flip of the image leaves the folded tile's even-frequency signs unchanged
    f = s.features([pat * 10 + 128])[0]
    f_flip = s.features([pat[:, ::-1] * 10 + 128])[0]
    assert np.allclose(f, f_flip, atol=1e-6)


def test_detects_its_key_not_decoys_nor_clean(images256):
    s = TileScheme(strength=3.0)
    marked = [stored(s.embed(im, KEY)) for im in images256]
    assert min(psnr(a, b) for a, b in zip(images256, marked)) > 38.0
    assert min(ssim(a, b) for a, b in zip(images256, marked)) > 0.98
    z = s.score(marked, [KEY])[:, 0]
    assert z.min() > 2.5 and z.mean() > 3.5
    decoys = s.score(marked, decoy_keys(300, seed="tile-test"))
    assert abs(decoys.mean()) < 0.2 and 0.8 < decoys.std() < 1.2  # N(0,1) for keys never used
    assert abs(s.score(images256, [KEY]).mean()) < 1.0
    # JPEG 75 and a resize keep it (the tile is defined in normalised coordinates)
    assert s.score([jpeg(m, 75) for m in marked], [KEY]).mean() > 3.0
    from PIL import Image

    half = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((128, 128), Image.Resampling.BICUBIC), np.float32)
            for m in marked]
    assert s.score(half, [KEY]).mean() > 3.0


def test_odd_sizes_and_small_images():
    s = TileScheme()
    rng = np.random.default_rng(1)
    for shape in [(31, 47, 3), (16, 16, 3), (300, 200, 3)]:
        im = natural(*shape[:2], rng)
        out = s.embed(im, KEY)
        assert out.shape == im.shape
        assert np.isfinite(s.features([out])).all()
