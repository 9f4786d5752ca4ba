"""Attacks: per-image attacks keep shapes; the copy-level averaging attack removes a pattern it can see;
the model attacks launder images through the tiny base; attack_copy writes an attacked copy to train on."""

import hashlib
import json

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.evaluation.attacks import (ALL_GRIDS, ATTACKS, COPY_ATTACKS, GRIDS, MODEL_ATTACKS, MODEL_GRIDS, apply,
                                          attack_copy, average_removal, random_crop, resize_back)
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.io.dataset import load_dataset


def test_every_image_attack_runs_on_its_grid():
    x = np.random.default_rng(0).uniform(0, 255, size=(32, 32, 3)).astype(np.float32)
    for name, grid in GRIDS.items():
        for param in grid:
            y = ATTACKS[name](x, param)
            assert y.ndim == 3 and y.shape[2] == 3 and np.isfinite(y).all()
    with pytest.raises(TracemarkError, match="unknown attack"):
        apply("bogus", x, 1.0)


def _copy(n=200, rate=0.2, amp=6.0, seed=0):
    """Smooth near-identical images (little content to mask the pattern), ``rate`` of them carrying
    one fixed random pattern: the case the averaging attack is built for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = 128 + 40 * np.sin(xx / 6.0)[..., None] * np.ones(3)
    pattern = rng.choice([-amp, amp], size=(32, 32, 3))
    marked = rng.random(n) < rate
    images = [np.clip(base + rng.normal(0, 2, size=base.shape) + (pattern if m else 0), 0, 255).astype(np.float32)
              for m in marked]
    return images, marked, pattern


def test_average_removal_finds_and_removes_a_visible_shared_pattern():
    images, marked, pattern = _copy()
    out = average_removal(images, threshold=3.0)
    touched = np.array([not np.array_equal(a, b) for a, b in zip(images, out)])
    assert touched[marked].mean() > 0.9 and touched[~marked].mean() < 0.05

    def corr(imgs):  # mean correlation of the marked images with the pattern
        return np.mean([np.corrcoef((im - im.mean()).ravel(), pattern.ravel())[0, 1]
                        for im, m in zip(imgs, marked) if m])

    assert corr(out) < 0.25 * corr(images)


def test_average_removal_leaves_a_clean_copy_alone_and_passes_odd_sizes():
    images, _, _ = _copy(rate=0.0)
    images.append(np.zeros((16, 20, 3), np.float32))
    out = COPY_ATTACKS["average_removal"](images, 4.0)
    assert len(out) == len(images) and out[-1].shape == (16, 20, 3)
    assert sum(not np.array_equal(a, b) for a, b in zip(images, out)) <= 2


def test_the_grids_hold_the_issue_countermeasures():
    assert {75, 50} <= set(GRIDS["jpeg"]) and GRIDS["resize_back"] == [0.5, 0.75]
    assert MODEL_GRIDS["img2img"] == [0.1, 0.2, 0.3] and set(MODEL_ATTACKS) == {"vae", "img2img"}
    assert {"random_crop", "average_removal", "vae", "img2img", "clean_mix"} <= set(ALL_GRIDS)


def test_resize_back_and_random_crop_keep_the_size_and_change_the_pixels():
    x = np.random.default_rng(0).uniform(0, 255, size=(30, 40, 3)).astype(np.float32)
    for y in (resize_back(x, 0.5), random_crop(x, 0.2, seed=1)):
        assert y.shape == x.shape and np.abs(y - x).mean() > 5
    assert np.array_equal(random_crop(x, 0.2, seed=1), random_crop(x, 0.2, seed=1))
    assert not np.array_equal(random_crop(x, 0.2, seed=1), random_crop(x, 0.2, seed=2))


# --- attack_copy ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_copy(tmp_path_factory):
    """6 captioned images of 32 px, PNG and JPEG mixed (an issued copy's layout)."""
    return make_sample_dataset(tmp_path_factory.mktemp("copy") / "copy", n=6, size=32, seed=3, fmt="mixed")


def _tree(root):
    """{relative path: sha256} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float32)


def test_attack_copy_writes_every_sample_with_its_caption_and_never_touches_the_input(small_copy, tmp_path):
    before = _tree(small_copy)
    src = load_dataset(small_copy)
    for name, param in (("resize_back", 0.5), ("jpeg", 50), ("random_crop", 0.1), ("average_removal", 3.0)):
        out = attack_copy(small_copy, tmp_path / name, name, param, seed=1)
        got = load_dataset(out)
        assert [(s.file_name, s.text) for s in got.samples] == [(s.file_name, s.text) for s in src.samples]
        assert (out / "metadata.jsonl").read_bytes() == (small_copy / "metadata.jsonl").read_bytes()
        for a, b in zip(src.samples, got.samples):
            x, y = _pixels(a.path), _pixels(b.path)
            assert y.shape == x.shape
            if name != "average_removal":  # that one touches only images carrying a shared pattern
                assert np.abs(x - y).mean() > 0.5, (name, a.file_name)
        assert _tree(small_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["resize_back", "jpeg", "random_crop",
                                                                 "average_removal"])  # no temp folder left
    none = attack_copy(small_copy, tmp_path / "none", "none", 0.0)
    assert _tree(none) == before


def test_attack_copy_is_deterministic_for_a_seed(small_copy, tmp_path):
    a = _tree(attack_copy(small_copy, tmp_path / "a", "random_crop", 0.2, seed=5))
    b = _tree(attack_copy(small_copy, tmp_path / "b", "random_crop", 0.2, seed=5))
    c = _tree(attack_copy(small_copy, tmp_path / "c", "random_crop", 0.2, seed=6))
    assert a == b and a != c
    n1 = _tree(attack_copy(small_copy, tmp_path / "n1", "noise", 5.0, seed=5))
    n2 = _tree(attack_copy(small_copy, tmp_path / "n2", "noise", 5.0, seed=5))
    assert n1 == n2


def test_clean_mix_adds_factor_times_n_clean_samples_with_their_captions(small_copy, tmp_path):
    clean_dir = make_sample_dataset(tmp_path / "clean", n=20, size=32, seed=9)
    clean = {s.text for s in load_dataset(clean_dir).samples}
    out = attack_copy(small_copy, tmp_path / "mixed", "clean_mix", 2.0, clean_dir=clean_dir, seed=2)
    got = load_dataset(out).samples
    src = load_dataset(small_copy).samples
    assert len(got) == len(src) + 12 and len({s.file_name for s in got}) == len(got)
    kept = {s.file_name: s.text for s in got}
    assert all(kept[s.file_name] == s.text for s in src)  # the copy as it was
    added = [s for s in got if s.file_name not in {t.file_name for t in src}]
    assert len(added) == 12 and all(s.text in clean for s in added)
    for s in src:
        assert (out / s.file_name).read_bytes() == s.path.read_bytes()
    again = attack_copy(small_copy, tmp_path / "again", "clean_mix", 2.0, clean_dir=clean_dir, seed=2)
    assert _tree(again) == _tree(out)
    other = attack_copy(small_copy, tmp_path / "other", "clean_mix", 2.0, clean_dir=clean_dir, seed=3)
    assert _tree(other) != _tree(out)
    with pytest.raises(TracemarkError, match="fewer than the 30"):
        attack_copy(small_copy, tmp_path / "too_many", "clean_mix", 5.0, clean_dir=clean_dir)
    with pytest.raises(TracemarkError, match="pass clean_dir"):
        attack_copy(small_copy, tmp_path / "no_clean", "clean_mix", 2.0)
    assert not (tmp_path / "too_many").exists() and not (tmp_path / "no_clean").exists()


def test_attack_copy_refuses_in_one_line(small_copy, tmp_path):
    """A Python API only: its errors name its arguments in words and no CLI flags (no params, which
    tests/cli/test_cli.py requires to be flags of some command)."""
    cases = [
        (dict(name="bogus", param=1.0), "unknown attack 'bogus'"),
        (dict(name="vae", param=0.0), "pass pipe"),
        (dict(name="img2img", param=0.2), "pass pipe"),
        (dict(name="jpeg", param=float("nan")), "finite number"),
    ]
    for kwargs, message in cases:
        with pytest.raises(TracemarkError, match=message) as e:
            attack_copy(small_copy, tmp_path / "out", **kwargs)
        assert "\n" not in str(e.value) and not e.value.params
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(TracemarkError, match="not an empty folder"):
        attack_copy(small_copy, tmp_path / "full", "jpeg", 75)
    with pytest.raises(TracemarkError, match="outside the copy"):
        attack_copy(small_copy, small_copy / "attacked", "jpeg", 75)
    assert not (tmp_path / "out").exists() and not (small_copy / "attacked").exists()


# --- model attacks on the CPU test world's tiny base -------------------------------------------------

@pytest.fixture(scope="module")
def base_pipe():
    from tracemark_sim.pipeline import default_base_path

    from tracemark.diffusion.loading import load_pipeline

    return load_pipeline(default_base_path(), device="cpu")


def test_the_vae_round_trip_and_img2img_keep_shapes_and_change_the_images(base_pipe):
    from tracemark.diffusion.generation import vae_roundtrip

    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (32, 32, 3)).astype(np.float32) for _ in range(4)]
    captions = ["a red circle", "a face", "a blue square", "a lake"]
    outs = {"vae": vae_roundtrip(ims, base_pipe, batch_size=3),
            "img2img": MODEL_ATTACKS["img2img"](ims, 0.3, pipe=base_pipe, prompts=captions, seed=0)}
    for name, out in outs.items():
        assert len(out) == 4 and all(y.shape == (32, 32, 3) for y in out), name
        assert all(np.abs(np.asarray(y, np.float32) - x).mean() > 5 for x, y in zip(ims, out)), name
    odd = vae_roundtrip([ims[0][:30, :27]], base_pipe)  # not a multiple of the VAE's factor: padded, cropped back
    assert odd[0].shape == (30, 27, 3)
    # batching changes nothing but float rounding (CPU kernels differ by batch size: a gray level at most)
    again = np.asarray(vae_roundtrip(ims[:2], base_pipe)[1], np.int16)
    assert np.abs(again - np.asarray(outs["vae"][1], np.int16)).max() <= 1


def test_attack_copy_runs_a_model_attack(small_copy, base_pipe, tmp_path):
    out = attack_copy(small_copy, tmp_path / "i2i", "img2img", 0.1, pipe=base_pipe, seed=0)
    src = load_dataset(small_copy).samples
    got = load_dataset(out).samples
    assert [(s.file_name, s.text) for s in got] == [(s.file_name, s.text) for s in src]
    assert all(_pixels(b.path).shape == _pixels(a.path).shape and not np.array_equal(_pixels(b.path), _pixels(a.path))
               for a, b in zip(src, got))
