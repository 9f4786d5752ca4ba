import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tracemark.protect import protect
from tracemark.registry import Registry
from tracemark.samples import make_sample_dataset
from tracemark.trace import trace_files

from registry_helpers import seeded_registry

N_LICENSEES = 100


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset issued to 100 licensees (spread, 40% of 50 images = 20 marked each)."""
    root = tmp_path_factory.mktemp("world")
    data = make_sample_dataset(root / "data", n=50, size=160, seed=3, fmt="mixed")
    reg = seeded_registry(root / "home")
    for i in range(N_LICENSEES):
        protect(data, root / f"copy{i:03d}", f"lic{i:03d}", registry=reg, rate=0.4, workers=1)
    return root, data, reg


def attack_to(src_dir, dst, names, rng):
    dst.mkdir()
    for i, n in enumerate(names):
        im = Image.open(src_dir / n).convert("RGB")
        f = rng.uniform(0.9, 1.1)
        im = im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BICUBIC)
        im.save(dst / f"leak_{i:03d}.jpg", quality=75)  # renamed: matching must use content


def test_names_licensee_from_20_reencoded_resized_images(world, tmp_path):
    root, data, reg = world
    target = reg.copies()[37]
    names = [m["file_name"] for m in target.marked][:20]
    attack_to(root / "copy037", tmp_path / "leak", names, np.random.default_rng(0))
    v = trace_files(tmp_path / "leak", reg)
    assert v.named == [target.licensee]
    best = min(v.scores, key=lambda s: s.p_value)
    assert best.licensee == target.licensee and best.p_value < 1e-6
    assert len(v.scores) == N_LICENSEES


def test_whole_copy_is_traced(world):
    root, data, reg = world
    v = trace_files(root / "copy005", reg)
    assert v.named == ["lic005"] and v.p_value < 1e-6


def test_unprotected_dataset_names_nobody(world, tmp_path):
    root, data, reg = world
    other = make_sample_dataset(tmp_path / "other", n=50, size=160, seed=99)
    v = trace_files(other, reg)
    assert not v.used and v.named == [] and v.p_value > 0.01
    v = trace_files(data, reg)  # the owner's own clean originals are not a leak either
    assert not v.used and v.p_value > 0.01


def test_null_p_values_are_calibrated_over_500_trials(world, tmp_path):
    """trace-files' p-values on clean images: FPR at alpha=0.01 <= 2% (per copy, uncorrected)."""
    root, data, reg = world
    other = make_sample_dataset(tmp_path / "clean", n=60, size=160, seed=5)
    from tracemark.dataset import list_images, read_image_rgb
    from tracemark.trace import score_copies

    images = [read_image_rgb(p) for p in list_images(other)]
    rng = np.random.default_rng(0)
    copies = reg.copies()
    pvals = []
    for trial in range(5):  # 5 random subsets x 100 copies = 500 null tests
        idx = rng.choice(len(images), size=20, replace=False)
        v = score_copies([images[i] for i in idx], copies, reg, match_files=False, seed=trial)
        pvals += [s.p_value for s in v.scores]
    pvals = np.array(pvals)
    assert len(pvals) == 500
    assert (pvals < 0.01).mean() <= 0.02
    assert (pvals < 0.1).mean() <= 0.14  # and the bulk of the distribution is not skewed either


@pytest.mark.parametrize("alpha,decoys,msg", [(2, 1000, "--alpha"), (0, 1000, "--alpha"), (float("nan"), 1000, "--alpha"),
                                              (0.01, 0, "--decoys"), (0.01, -5, "--decoys")])  # fmt: skip
def test_meaningless_statistics_parameters_are_refused(world, alpha, decoys, msg):
    """--alpha 2 used to name every licensee on unrelated images; --decoys 0 gave p = nan."""
    from tracemark.errors import TracemarkError

    root, data, reg = world
    with pytest.raises(TracemarkError, match=msg):
        trace_files(data, reg, alpha=alpha, n_decoys=decoys)


def test_content_projection_uses_the_recorded_source_by_default(sample_dir, registry, tmp_path):
    """Without --data, trace-files takes the original dataset's folder the registry recorded at issue
    time (the content projection is then on by default); a named --data wins; a gone source turns it off."""
    from tracemark.protect import protect
    from tracemark.trace import trace_files

    protect(sample_dir, tmp_path / "a", "a", registry=registry, rate=0.2, workers=1)
    v = trace_files(tmp_path / "a", registry)
    assert v.named == ["a"] and v.timings["content_from"] == str(sample_dir.resolve())
    assert trace_files(tmp_path / "a", registry, data_dir=tmp_path / "a").timings["content_from"] == str(tmp_path / "a")
    registry.conn.execute("UPDATE datasets SET source_path = ?", (str(tmp_path / "gone"),))
    assert trace_files(tmp_path / "a", registry).timings["content_from"] is None


def test_batched_scoring_equals_per_copy_scoring(sample_dir, registry, tmp_path):
    """Issue #14: copies reading the same images are tested in one key-matrix product with one decoy
    pass; every copy's z and p must equal what testing it alone gives (to 1e-9)."""
    from tracemark.protect import protect
    from tracemark.trace import load_images, score_copies

    for lic in ("a", "b", "c", "d"):
        protect(sample_dir, tmp_path / lic, lic, registry=registry, rate=0.2, workers=1)
    protect(sample_dir, tmp_path / "e", "e", registry=registry, rate=0.2, workers=1, strategy="ambient")
    images = load_images(sorted((tmp_path / "b").glob("*.png"))[:12])
    copies = registry.copies()
    together = score_copies(images, copies, registry, match_files=False, seed=3)
    for c in copies:
        alone = score_copies(images, [c], registry, match_files=False, seed=3)
        a, t = alone.scores[0], next(s for s in together.scores if s.copy_id == c.id)
        assert abs(a.z - t.z) < 1e-9 and abs(a.p_value - t.p_value) < 1e-9 * max(1.0, a.p_value) + 1e-300
