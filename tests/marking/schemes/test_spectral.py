"""spectral: a keyed spectral equaliser, read from the power spectrum (blind to phase)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.marking.metrics import psnr, ssim
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes.spectral import SpectralScheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import jpeg, natural, stored

KEY = Key(bytes(range(32)))


@pytest.fixture(scope="module")
def images256() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [natural(256, 256, rng) for _ in range(8)]


def test_registered_and_params_roundtrip():
    s = get_scheme("spectral", grid=64)
    assert isinstance(s, SpectralScheme) and s.kind == "correlation"
    p = s.params()
    assert get_scheme("spectral", **{k: v for k, v in p.items() if k != "scheme"}).params() == p
    with pytest.raises(TracemarkError, match="band"):
        SpectralScheme(band=(0.5, 0.2))
    with pytest.raises(TracemarkError, match="max_gain"):
        SpectralScheme(max_gain=1.5)


def test_strength_is_the_rms_of_the_change(images256):
    s = SpectralScheme(strength=3.0, grid=64)
    for im in images256[:3]:
        out = s.embed(im, KEY)
        assert np.sqrt(np.mean((out - im) ** 2)) == pytest.approx(3.0, rel=1e-3)
    flat = np.full((64, 64, 3), 100.0, np.float32)  # no energy in the band: nothing to equalise
    assert np.array_equal(s.embed(flat, KEY), flat)


def test_detects_its_key_blind_to_flip_jpeg_and_resize(images256):
    s = SpectralScheme(strength=3.0, grid=64)
    marked = [stored(s.embed(im, KEY)) for im in images256]
    assert min(psnr(a, b) for a, b in zip(images256, marked)) > 38.0
    assert min(ssim(a, b) for a, b in zip(images256, marked)) > 0.98
    assert s.score(marked, [KEY])[:, 0].min() > 8.0
    decoys = s.score(marked, decoy_keys(300, seed="spectral-test"))
    assert abs(decoys.mean()) < 0.2 and 0.8 < decoys.std() < 1.2  # N(0,1) for keys never used
    assert abs(s.score(images256, [KEY]).mean()) < 1.0
    edits = {
        "flip": [m[:, ::-1] for m in marked],
        "jpeg 75": [jpeg(m, 75) for m in marked],
        "resize 0.5": [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((128, 128), Image.Resampling.BICUBIC),
                                  np.float32) for m in marked],
    }
    for name, ims in edits.items():
        assert s.score(ims, [KEY]).mean() > 4.0, name
    # a crop rescales the image-relative frequencies: the signs no longer line up (documented)
    assert s.score([m[13:243, 13:243] for m in marked], [KEY]).mean() < 3.0


def test_odd_sizes_and_images_smaller_than_the_grid():
    s = SpectralScheme()
    rng = np.random.default_rng(3)
    for shape in [(31, 47, 3), (16, 16, 3), (300, 200, 3)]:
        im = natural(*shape[:2], rng)
        out = s.embed(im, KEY)
        assert out.shape == im.shape and np.isfinite(out).all()
        assert np.isfinite(s.features([out])).all()
