"""color: a keyed, position-free colour remap, read paired with the original."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.marking.metrics import psnr
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes.base import per_image_scores
from tracemark.marking.schemes.color import ColorScheme
from tracemark.registry.keys import Key, decoy_keys

from scheme_test_images import jpeg, natural, stored

KEY = Key(bytes(range(32)))
OTHER = Key(bytes(range(1, 33)))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [natural(96, 96, rng) for _ in range(12)]


def test_registered_params_roundtrip_and_bad_params():
    s = get_scheme("color", grid=3)
    assert isinstance(s, ColorScheme) and s.kind == "correlation" and s.needs_originals and s.dim == 81
    p = s.params()
    assert get_scheme("color", **{k: v for k, v in p.items() if k != "scheme"}).params() == p
    for bad, word in (({"grid": 1}, "grid"), ({"width": 5.0}, "width"), ({"max_gain": 0.5}, "max_gain")):
        with pytest.raises(TracemarkError, match=word):
            ColorScheme(**bad)


def test_strength_is_the_rms_of_the_change(images):
    s = ColorScheme(strength=3.2)
    for im in images[:4]:
        out = s.embed(im, KEY)
        assert np.sqrt(np.mean((out - im) ** 2)) == pytest.approx(3.2, rel=1e-3)
        assert psnr(im, stored(out)) > 37.5


def test_the_change_is_a_function_of_colour_not_of_position(images):
    """What makes it learnable by attention-only LoRA: crop, flip or shuffle the pixels and the change
    follows them (a fixed spatial pattern would not)."""
    s = ColorScheme()
    im = images[0]
    d = s.change(im, KEY)
    assert np.allclose(s.change(im[10:70, 20:90], KEY), d[10:70, 20:90], atol=1e-5)
    assert np.allclose(s.change(im[:, ::-1], KEY), d[:, ::-1], atol=1e-5)
    flat = np.full((16, 16, 3), 77.0, np.float32)
    out = s.embed(flat, KEY) - flat  # one colour: one shift, the same everywhere
    assert np.ptp(out.reshape(-1, 3), axis=0).max() < 1e-4 and np.abs(out).max() > 1.0
    assert not np.allclose(s.change(im, OTHER), d)  # another key, another remap


def test_paired_detection_survives_jpeg_and_resize_and_decoys_are_null(images):
    s = ColorScheme()
    marked = [stored(s.embed(im, KEY)) for im in images]
    edits = {
        "none": marked,
        "jpeg 50": [jpeg(m, 50) for m in marked],
        "resize 0.5": [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((48, 48), Image.Resampling.BICUBIC),
                                  np.float32) for m in marked],
    }
    decoys = s.key_vectors(decoy_keys(300, seed="color-test"))
    for name, imgs in edits.items():
        F, used = s.residual_features(imgs, images)
        assert used.all(), name
        pooled = F.sum(axis=0, keepdims=True)
        z = per_image_scores(pooled, s.key_vectors([KEY, OTHER]), "correlation")[0]
        assert z[0] > 3.0 and abs(z[1]) < 2.5, (name, z)  # a sign test over the colours the images cover
        zd = per_image_scores(pooled, decoys, "correlation")[0]
        assert abs(zd.mean()) < 0.3 and 0.7 < zd.std() < 1.3, name
    # an unmarked file: its residual is nothing, no key reads in it
    F, used = s.residual_features([stored(im) for im in images], images)
    assert abs(per_image_scores(F.sum(axis=0, keepdims=True), s.key_vectors([KEY]), "correlation")[0, 0]) < 4.0


def test_direction_features_read_a_direction_at_its_original(images):
    """The white box's loss gradient is a direction at the model's resolution; the original is
    brought to it as the trainers do (shorter side, centre crop)."""
    s = ColorScheme()
    small = [np.asarray(Image.fromarray(stored(im).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC),
                        np.float32) for im in images]
    rng = np.random.default_rng(0)
    dirs = [s.change(x, KEY) + rng.normal(0, 0.5, x.shape).astype(np.float32) for x in small]
    F = s.direction_features(dirs, images)  # originals at 96 px, directions at 32 px
    z = per_image_scores(F.sum(axis=0, keepdims=True), s.key_vectors([KEY, OTHER]), "correlation")[0]
    assert z[0] > 3.0 and abs(z[1]) < 2.5
    noise = [rng.normal(0, 1, x.shape).astype(np.float32) for x in small]
    zn = per_image_scores(s.direction_features(noise, images).sum(axis=0, keepdims=True),
                          s.key_vectors(decoy_keys(300, seed="color-noise")), "correlation")[0]
    assert abs(zn.mean()) < 0.3 and 0.7 < zn.std() < 1.3
