"""warp: keyed smooth flow-field warp with the blind structure-tensor strain detector."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from tracemark.detection import stats
from tracemark.marking.metrics import psnr, ssim
from tracemark.marking.schemes import get_scheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import jpeg, natural, stored
from tracemark.marking.schemes.warp import WarpScheme

KEY = Key(bytes(range(32)))


@pytest.fixture(scope="module")
def images384() -> list[np.ndarray]:
    rng = np.random.default_rng(2024)
    return [natural(384, 384, rng) for _ in range(12)]


def test_registered_and_params_roundtrip():
    s = get_scheme("warp")
    assert isinstance(s, WarpScheme) and s.kind == "correlation"
    p = s.params()
    assert get_scheme("warp", **{k: v for k, v in p.items() if k != "scheme"}).params() == p


def test_field_unit_and_resolution_independence():
    s = WarpScheme(strength=1.0)
    dy, dx = s.field(KEY, 512, 512)
    assert np.sqrt(np.mean(dx**2 + dy**2)) == pytest.approx(1.0, rel=0.02)
    dy32, dx32 = s.field(KEY, 32, 32)
    assert np.sqrt(np.mean(dx32**2 + dy32**2)) == pytest.approx(1.0 / 16, rel=0.05)
    # the same field in normalised coordinates: 512 sampled every 16 px ~ 32 (pixel centres differ)
    assert np.corrcoef(dx[7::16, 7::16].ravel(), dx32.ravel())[0, 1] > 0.97
    # different keys, different (nearly orthogonal) fields
    dy2, dx2 = s.field(decoy_keys(1, seed="warp-other")[0], 512, 512)
    assert abs(np.corrcoef(dx.ravel(), dx2.ravel())[0, 1]) < 0.2


def test_embed_keeps_shape_dtype_and_quality(images384):
    s = WarpScheme()
    for im in images384[:3]:
        out = s.embed(im, KEY)
        assert out.shape == im.shape and out.dtype == np.float32
        marked = stored(out)
        # documented ~54 dB on smooth 1/f images at the default (docs/schemes.md); measured on these
        # three: 55.1, 53.6, 54.9 dB, SSIM 0.9989-0.9991 (a far higher PSNR would mean no mark)
        assert 53.0 <= psnr(im, marked) <= 56.0
        assert ssim(im, marked) >= 0.998
    from tracemark.errors import TracemarkError

    with pytest.raises(TracemarkError, match="strength"):  # an untraceable "mark" is refused, not issued
        WarpScheme(strength=0.0)


def test_default_psnr_on_a_real_photo():
    cbook = pytest.importorskip("matplotlib.cbook")
    try:
        photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"), np.float32)
    except (OSError, ValueError):  # pragma: no cover - sample data not shipped
        pytest.skip("matplotlib sample photo not available")
    photo = photo[44:556]  # 512 x 512
    s = WarpScheme()
    marked = [stored(s.embed(photo, k)) for k in decoy_keys(16, seed="warp-photo")]
    p = np.array([psnr(photo, m) for m in marked])
    # documented (docs/schemes.md) for these 16 keys at 0.2 px: 36.0-39.1 dB, mean 37.5, SSIM 0.988-0.989
    assert 35.5 <= p.min() and p.max() <= 39.5 and abs(p.mean() - 37.5) < 0.3, p
    assert min(ssim(photo, m) for m in marked) >= 0.987


def test_key_vectors_deterministic_and_random_vectors_match():
    s = WarpScheme()
    k1, k2 = decoy_keys(2, seed="warp-test")
    P = s.key_vectors([k1, k2, k1])
    assert P.shape == (3, s.dim)
    assert set(np.unique(P)) == {-1.0, 1.0}
    assert np.array_equal(P[0], P[2]) and not np.array_equal(P[0], P[1])
    assert np.array_equal(P[0], WarpScheme(strength=3.0).key_vectors([k1])[0])
    R = s.random_vectors(2000, np.random.default_rng(0))
    assert R.shape == (2000, s.dim) and set(np.unique(R)) == {-1.0, 1.0}
    assert abs(R.mean()) < 0.01


def test_right_key_detected_decoys_and_clean_null(images384):
    s = WarpScheme(strength=1.0)
    issued = decoy_keys(4, seed="warp-issued")
    marked = [stored(s.embed(im, issued[1])) for im in images384]
    decoys = s.random_vectors(2000, np.random.default_rng(5))
    P = s.key_vectors(issued)
    F = s.features(marked)

    z = s.score(marked, issued)
    assert z[:, 1].mean() > 2.0  # measured 3.5 per 384 px image
    assert np.abs(np.delete(z, 1, axis=1)).mean() < 1.2

    res = stats.test_keys(F, P, decoys, "correlation")
    assert res.stat[1] > 7.0 and res.p_holm[1] < 1e-10  # measured 9.7
    assert np.all(np.abs(np.delete(res.stat, 1)) < 3.5)
    assert abs(res.null.mean) < 0.15 and 0.85 < res.null.std < 1.15

    # the mark survives JPEG 75 in aggregate
    res_jpeg = stats.test_keys(s.features([jpeg(m, 75) for m in marked]), P, decoys, "correlation")
    assert res_jpeg.stat[1] > 5.0  # measured 8.8

    # unmarked images: every key null-like, decoys N(0, 1)
    res_clean = stats.test_keys(s.features(images384), P, decoys, "correlation")
    assert np.all(np.abs(res_clean.stat) < 3.5)
    assert abs(res_clean.null.mean) < 0.15 and 0.85 < res_clean.null.std < 1.15


def test_default_strength_aggregates(images384):
    s = WarpScheme()
    P = s.key_vectors([KEY])
    F = s.features([stored(s.embed(im, KEY)) for im in images384])
    res = stats.test_keys(F, P, s.random_vectors(1000, np.random.default_rng(9)), "correlation")
    assert res.stat[0] > 2.5  # weak per image (measured 1.1), 3.7 over these 12 images


@pytest.mark.parametrize("shape", [(32, 32), (37, 53)])
def test_small_and_odd_sizes(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    s = WarpScheme(strength=8.0)  # 0.5 px at 32 px: the default is 1/80 px there, too faint
    ims = [natural(*shape, rng) for _ in range(30)]
    outs = [s.embed(im, KEY) for im in ims]
    assert all(o.shape == i.shape and o.dtype == np.float32 for o, i in zip(outs, ims))
    assert np.mean([psnr(i, stored(o)) for i, o in zip(ims, outs)]) > 27.0
    F = s.features([stored(o) for o in outs])
    assert F.shape == (30, s.dim) and np.all(np.isfinite(F))
    decoys = s.random_vectors(1000, np.random.default_rng(3))
    P = s.key_vectors([KEY])
    assert stats.test_keys(F, P, decoys, "correlation").stat[0] > 6.0  # measured 13-14
    clean = stats.test_keys(s.features(ims), P, decoys, "correlation")
    assert abs(clean.stat[0]) < 3.5
