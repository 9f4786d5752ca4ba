"""spread (the default scheme): keyed signs on a low-to-mid DCT band of a 32 x 32 grid, whitened detector.

Measured values in the comments come from these exact images and keys (natural 1/f images,
``default_rng(7)``, rounded to uint8 as image files hold them; 256 x 256)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tracemark.detection import stats
from tracemark.errors import TracemarkError
from tracemark.marking.metrics import psnr, ssim
from tracemark.marking.protect import DEFAULT_SCHEME, default_scheme
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes.spread import SpreadScheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import jpeg, natural

KEY = Key(bytes(range(32)))


@pytest.fixture(scope="module")
def images256() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [np.rint(natural(256, 256, rng)).astype(np.uint8) for _ in range(10)]


@pytest.fixture(scope="module")
def default() -> SpreadScheme:
    """The scheme `tracemark protect` uses when no scheme or strength is given."""
    return default_scheme(DEFAULT_SCHEME, None, {})


def _f32(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.float32) for im in images]


def test_is_the_default_and_params_roundtrip(default):
    assert isinstance(default, SpreadScheme) and default.kind == "correlation"
    assert default.strength == pytest.approx(3.15)  # the README's "spread at 3.15/255"
    p = default.params()
    assert p == {"scheme": "spread", "strength": 3.15, "grid": 32, "band": [3.0, 16.0], "flip_invariant": True}
    assert get_scheme("spread", **{k: v for k, v in p.items() if k != "scheme"}).params() == p
    assert default.dim == 315  # 3 channels x the band's even-column coefficients
    for bad, match in [({"grid": 4}, "grid must be"), ({"band": [10, 5]}, "band must be"),
                       ({"band": [15.5, 16]}, "fewer than 8"), ({"strength": 0.0}, "strength")]:
        with pytest.raises(TracemarkError, match=match):
            SpreadScheme(**bad)


def test_default_strength_harm_on_256px_images(default, images256):
    marked = [default.embed_uint8(im, KEY) for im in images256]
    p = [psnr(*_f32([a, b])) for a, b in zip(images256, marked)]
    # RMS 3.15 levels plus rounding: 20 log10(255 / 3.15) = 38.2 dB; measured 38.13-38.17
    assert min(p) >= 38.0 and max(p) < 38.5, p
    assert min(ssim(a, b) for a, b in zip(images256, marked)) >= 0.99  # measured 0.995


def test_default_strength_psnr_on_the_files_as_written(tmp_path):
    """The README's promise (>= 38 dB mean PSNR on the written files), measured here on the files
    protect writes (PNG, and JPEG re-encoded with the mark in its DCT), not on arrays."""
    from registry_helpers import seeded_registry
    from tracemark.marking.protect import protect
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "photos", n=32, size=256, fmt="mixed")
    res = protect(data, tmp_path / "copy", "acme", registry=seeded_registry(tmp_path / "home"), rate=1.0,
                  workers=1)
    assert res.scheme == "spread" and res.n_marked == 32
    p = []
    for f in sorted(data.glob("*.[jp]*g")):
        a = np.asarray(Image.open(f).convert("RGB"), np.float32)
        b = np.asarray(Image.open(tmp_path / "copy" / f.name).convert("RGB"), np.float32)
        p.append(psnr(a, b))
    # measured on these files: mean 38.05 dB (JPEG 37.95, PNG 38.15), min 37.90
    assert np.mean(p) >= 38.0 and min(p) >= 37.8, (np.mean(p), min(p))
    assert res.psnr_mean == pytest.approx(np.mean(p), abs=0.01)  # what protect prints is what was written


def test_right_key_detected_wrong_keys_and_clean_images_null(default, images256):
    marked = _f32(default.embed_uint8(im, KEY) for im in images256)
    clean = _f32(images256)
    others = decoy_keys(300, seed="spread-test")

    z = default.score(marked, [KEY])[:, 0]
    assert z.min() > 3.5 and z.mean() > 5.0, z  # measured 4.7-7.1 per image, mean 5.8
    wrong = default.score(marked, others)
    # keys never used: N(0, 1) per image (3000 values: measured mean -0.004, sd 0.996)
    assert abs(wrong.mean()) < 0.1 and 0.9 < wrong.std() < 1.1, (wrong.mean(), wrong.std())
    null = default.score(clean, others + [KEY])
    assert abs(null.mean()) < 0.1 and 0.9 < null.std() < 1.1, (null.mean(), null.std())  # measured 0.001, 0.984

    # aggregated over the 10 images, as trace-files and the audit test
    P = default.key_vectors([KEY] + others[:200])
    decoys = default.random_vectors(1000, np.random.default_rng(0))
    res = stats.test_keys(default.features(marked), P, decoys, "correlation")
    assert res.stat[0] > 9.0 and res.p_holm[0] < 1e-15  # measured 11.5, Holm p 2.5e-27
    assert np.abs(res.stat[1:]).max() < 4.0 and abs(res.stat[1:].mean()) < 0.2  # measured max 3.35, mean 0.04
    res_clean = stats.test_keys(default.features(clean), P, decoys, "correlation")
    assert abs(res_clean.stat[0]) < 3.0 and not (res_clean.p_holm < 0.01).any()  # measured 0.31
    assert abs(res_clean.null.mean) < 0.15 and 0.85 < res_clean.null.std < 1.15

    # JPEG 75, a half-size resize and a horizontal flip (fine-tuning's augmentation) keep it
    assert default.score([jpeg(m, 75) for m in marked], [KEY]).mean() > 5.0  # measured 5.8
    half = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((128, 128), Image.Resampling.BICUBIC), np.float32)
            for m in marked]
    assert default.score(half, [KEY]).mean() > 5.0  # measured 5.8
    assert default.score([m[:, ::-1] for m in marked], [KEY]).mean() > 5.0  # measured 5.8


def test_deterministic(default, images256):
    im = images256[0]
    again = default_scheme(DEFAULT_SCHEME, None, {})  # a fresh instance: nothing cached
    a = default.embed_uint8(im, KEY)
    assert np.array_equal(a, again.embed_uint8(im, KEY)) and a.dtype == np.uint8 and a.shape == im.shape
    assert np.array_equal(default.embed(im, KEY), again.embed(im, KEY))
    assert not np.array_equal(a, default.embed_uint8(im, decoy_keys(1, seed="spread-other")[0]))
    # the fast uint8 path is the float path rounded (up to .5 ties)
    assert np.abs(a.astype(int) - np.clip(np.rint(default.embed(im, KEY)), 0, 255).astype(int)).max() <= 1
    P = default.key_vectors([KEY, KEY])
    assert np.array_equal(P[0], P[1]) and set(np.unique(P)) == {-1.0, 1.0}
    assert np.array_equal(P[0], get_scheme("spread", strength=8.0).key_vectors([KEY])[0])  # strength-free key
    assert np.array_equal(default.features([a]), again.features([a]))
    pat = default.pattern(KEY)
    assert pat.shape == (32, 32, 3) and np.sqrt((pat**2).mean()) == pytest.approx(1.0, rel=1e-5)
