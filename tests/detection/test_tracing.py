import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tracemark.detection.tracing import trace_files
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.marking.protect import protect
from tracemark.registry.database import Registry

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


def test_non_blind_scoring_subtracts_the_originals_and_reads_the_mark_stronger(world, tmp_path):
    """With the originals (the registry's recorded source by default) each matched leaked file is
    scored minus its original: the content is gone, so (1) a licensee's own marked samples, unmarked,
    give exactly 0 for every key instead of a content-driven z fixed per key and dataset (blind, the
    20 licensees' own originals measured z -1.61 ... 1.65: an N(0, 1) draw that every leak of those
    samples repeats), and (2) the mark is read without the content's noise (copy 37, 20 files
    resized and JPEG 75: blind z 12.07, non-blind 16.35; the 99 others at most 2.47)."""
    from tracemark.detection.scoring import score_copies
    from tracemark.io.dataset import list_images, read_image_rgb

    root, data, reg = world
    copies = reg.copies()
    target = copies[37]
    names = [m["file_name"] for m in target.marked][:20]
    attack_to(root / "copy037", tmp_path / "leak", names, np.random.default_rng(0))
    v = trace_files(tmp_path / "leak", reg)
    assert v.named == [target.licensee] and v.timings["non_blind_images"] == 20
    paths = list_images(tmp_path / "leak")
    images = [read_image_rgb(p) for p in paths]
    blind = score_copies(images, copies, reg, names=[p.name for p in paths])
    z = {s.licensee: s.z for s in v.scores}
    z_blind = {s.licensee: s.z for s in blind.scores}
    assert blind.timings["non_blind_images"] == 0
    assert z[target.licensee] > 1.2 * z_blind[target.licensee]
    assert max(val for k, val in z.items() if k != target.licensee) < 3.5
    for c in copies[:20]:  # each licensee's marked samples, unmarked: nothing but content to read
        own = tmp_path / f"own{c.id}"
        own.mkdir()
        for m in c.marked:
            shutil.copy(data / m["file_name"], own / m["file_name"])
        v = trace_files(own, reg, data_dir=data)
        assert not v.used and all(s.z == 0.0 for s in v.scores if s.n_images), c.licensee


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
    from tracemark.io.dataset import list_images, read_image_rgb
    from tracemark.detection.scoring import score_copies

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


@pytest.mark.parametrize("alpha,decoys,msg", [(2, 1000, "^alpha must"), (0, 1000, "^alpha must"), (float("nan"), 1000, "^alpha must"),
                                              (0.01, 0, "^n_decoys must"), (0.01, -5, "^n_decoys must")])  # fmt: skip
def test_meaningless_statistics_parameters_are_refused(world, alpha, decoys, msg):
    """--alpha 2 used to name every licensee on unrelated images; --decoys 0 gave p = nan."""
    from tracemark.errors import TracemarkError

    root, data, reg = world
    with pytest.raises(TracemarkError, match=msg):
        trace_files(data, reg, alpha=alpha, n_decoys=decoys)


def test_content_projection_uses_the_recorded_source_by_default(sample_dir, registry, tmp_path):
    """Without --data, trace-files takes the original dataset's folder the registry recorded at issue
    time (the content projection is then on by default); a named --data wins; a gone source turns it off."""
    from tracemark.marking.protect import protect
    from tracemark.detection.tracing import trace_files

    protect(sample_dir, tmp_path / "a", "a", registry=registry, rate=0.2, workers=1)
    v = trace_files(tmp_path / "a", registry)
    assert v.named == ["a"] and v.timings["content_from"] == str(sample_dir.resolve())
    assert trace_files(tmp_path / "a", registry, data_dir=tmp_path / "a").timings["content_from"] == str(tmp_path / "a")
    registry.conn.execute("UPDATE datasets SET source_path = ?", (str(tmp_path / "gone"),))
    assert trace_files(tmp_path / "a", registry).timings["content_from"] is None


def test_batched_scoring_equals_per_copy_scoring(sample_dir, registry, tmp_path):
    """Issue #14: copies reading the same images are tested in one key-matrix product with one decoy
    pass; every copy's z and p must equal what testing it alone gives (to 1e-9)."""
    from tracemark.marking.protect import protect
    from tracemark.detection.tracing import load_images
    from tracemark.detection.scoring import score_copies

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


# --- realistic leaks: look-alike faces, renamed, mixed and re-encoded files ---------------------

FACE_COPIES = 5


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """``faces(seed)``: 300 cartoon faces (64 px, flat backgrounds: many look-alikes within a few
    dHash bits) issued to 5 licensees at rate 0.05 (15 marked each); built once per seed."""
    from tracemark_sim import make_dataset

    worlds = {}

    def build(seed: int):
        if seed not in worlds:
            root = tmp_path_factory.mktemp(f"faces{seed}")
            data = make_dataset(root / "data", 300, "faces", seed=seed, size=64)
            reg = seeded_registry(root / "home")
            for i in range(FACE_COPIES):
                # random selection: these tests are about matching leaked files; the default visual
                # selection's overlapping marked sets are measured in docs/reliability.md (27.5)
                protect(data, root / f"copy{i}", f"L{i}", registry=reg, rate=0.05, workers=1, selection="random",
                        min_marked=0)
            worlds[seed] = (root, data, reg)
        return worlds[seed]

    return build


def _copy_files_to(dst, files, rng):
    """Files copied under random names into one flat folder (how merged or re-shared copies look)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in files:
        shutil.copyfile(p, dst / f"{rng.integers(1 << 40):010x}{p.suffix}")


def _scores(v):
    return {s.licensee: s for s in v.scores}


def test_two_full_copies_in_one_folder_name_both_and_no_innocent(faces, tmp_path):
    root, data, reg = faces(0)
    rng = np.random.default_rng(0)
    verdicts = []
    for i in range(FACE_COPIES):
        j = (i + 1) % FACE_COPIES
        leak = tmp_path / f"both{i}"
        _copy_files_to(leak, sorted((root / f"copy{i}").iterdir()) + sorted((root / f"copy{j}").iterdir()), rng)
        verdicts.append((i, j, trace_files(leak, reg)))
    assert [sorted(v.named) for _, _, v in verdicts] == [sorted([f"L{i}", f"L{j}"]) for i, j, _ in verdicts], \
        [[(s.licensee, round(s.z, 2)) for s in v.scores] for _, _, v in verdicts]
    for i, j, v in verdicts:  # their marked files were found, and counted
        assert _scores(v)[f"L{i}"].n_matched >= 12 and _scores(v)[f"L{j}"].n_matched >= 12 and not v.warnings


def test_copy_mixed_with_the_originals_names_it_and_no_innocent(faces, tmp_path):
    root, data, reg = faces(0)
    rng = np.random.default_rng(1)
    verdicts = []
    for i in range(FACE_COPIES):
        leak = tmp_path / f"mixed{i}"
        _copy_files_to(leak, sorted((root / f"copy{i}").iterdir()) + sorted(data.iterdir()), rng)
        verdicts.append(trace_files(leak, reg))
    assert [v.named for v in verdicts] == [[f"L{i}"] for i in range(FACE_COPIES)], \
        [[(s.licensee, round(s.z, 2)) for s in v.scores] for v in verdicts]
    assert all(v.to_dict()["scores"][i]["n_matched"] >= 12 for i, v in enumerate(verdicts))


def test_renamed_copy_keeps_its_evidence(faces, tmp_path):
    """File names carry no weight of their own: a copy under random names is traced about as
    strongly as with its names (look-alike faces must not dilute the marked files)."""
    root, data, reg = faces(0)
    rng = np.random.default_rng(2)
    for i in range(FACE_COPIES):
        z_named = _scores(trace_files(root / f"copy{i}", reg))[f"L{i}"].z
        leak = tmp_path / f"renamed{i}"
        _copy_files_to(leak, sorted((root / f"copy{i}").iterdir()), rng)
        v = trace_files(leak, reg)
        assert v.named == [f"L{i}"]
        assert _scores(v)[f"L{i}"].z >= 0.75 * z_named, (i, _scores(v)[f"L{i}"].z, z_named)


def test_15_attacked_marked_files_among_40_others_name_the_licensee(faces, tmp_path):
    """JPEG 75 + resize 0.9 + renamed: the mark's own dHash drift plus the attack's exceed a few bits."""
    root, data, reg = faces(1)
    rng = np.random.default_rng(3)
    for i, copy in enumerate(reg.copies()):
        marked = [m["file_name"] for m in copy.marked][:15]
        leak = tmp_path / f"leak{i}"
        leak.mkdir()
        for n in marked:
            im = Image.open(root / f"copy{i}" / n).convert("RGB")
            im = im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.Resampling.BICUBIC)
            im.save(leak / f"{rng.integers(1 << 40):010x}.jpg", quality=75)
        others = [p for p in sorted(data.glob("*.png")) if p.name not in set(marked)]
        _copy_files_to(leak, [others[k] for k in rng.choice(len(others), 40, replace=False)], rng)
        v = trace_files(leak, reg)
        assert v.named == [copy.licensee], (i, v.named, [(s.licensee, s.z) for s in v.scores])


def test_leak_without_any_marked_sample_warns(faces, tmp_path):
    root, data, reg = faces(0)
    other = make_sample_dataset(tmp_path / "other", n=30, size=64, seed=11)  # another domain: nothing to match
    v = trace_files(other, reg)
    assert not v.used and len(v.warnings) == 1 and "matched a marked sample" in v.warnings[0]
    assert "Warning:" in v.sentence() and v.to_dict()["warnings"] == v.warnings
    assert all(s.n_matched == 0 and s.n_images == 30 for s in v.scores)  # scored on all, and says so


def test_image_dependent_marks_are_read_at_their_originals(sample_dir, registry, tmp_path):
    """``color`` (a function of each pixel's colour): the white box hands score_copies directions at
    the originals (``at``); read blind the same directions name nobody. trace-files of the copy's
    own files (the originals found by the registry) names the licensee."""
    from tracemark.detection.scoring import score_copies
    from tracemark.io.dataset import read_image_rgb
    from tracemark.marking.schemes import get_scheme

    for lic in ("a", "b"):
        protect(sample_dir, tmp_path / lic, lic, registry=registry, rate=0.4, workers=1, scheme="color")
    copies = registry.copies()
    a = next(c for c in copies if c.licensee == "a")
    originals = [read_image_rgb(sample_dir / m["file_name"]) for m in a.marked]
    sch, key = get_scheme("color"), registry.key_for_copy(a)
    rng = np.random.default_rng(0)
    dirs = [sch.change(x, key) + rng.normal(0, 2.0, x.shape).astype(np.float32) for x in originals]
    paired = score_copies(dirs, copies, registry, match_files=False, at=originals)
    assert paired.named == ["a"]
    assert score_copies(dirs, copies, registry, match_files=False).named == []
    assert trace_files(tmp_path / "a", registry, data_dir=sample_dir).named == ["a"]


def test_a_scheme_read_only_with_originals_warns_when_read_blind(sample_dir, registry, tmp_path):
    from tracemark.detection.scoring import score_copies
    from tracemark.io.dataset import read_image_rgb

    protect(sample_dir, tmp_path / "a", "a", registry=registry, rate=0.4, workers=1, scheme="color")
    images = [read_image_rgb(p) for p in sorted((tmp_path / "a").glob("*.*")) if p.suffix in (".png", ".jpg")][:8]
    v = score_copies(images, registry.copies(), registry, match_files=False)
    assert any("read only against the original images" in w for w in v.warnings)
