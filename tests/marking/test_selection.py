"""Which samples a copy marks: keyed random subsets, keyed caption clusters, keyed look-alike images."""

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.marking.selection import caption_vectors, image_thumbnails, select_marked, select_samples
from tracemark.registry.keys import derive_key


def _captions(n=400, seed=0):
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue", "pink", "orange", "gray", "white", "black", "cyan", "purple"]
    things = ["cat", "car", "tree", "house", "boat"]
    return [f"a {rng.choice(colours)} {rng.choice(things)} on a {rng.choice(colours)} background" for _ in range(n)]


@pytest.mark.parametrize("selection", ["coherent", "cluster"])
def test_coherent_selection_is_keyed_sized_and_shares_a_concept(selection):
    caps = _captions()
    ids = [f"{i:04d}.png" for i in range(len(caps))]
    master = bytes(range(32))
    picks = [select_samples(derive_key(master, "d", f"lic{j}"), ids, caps, 0.05, selection) for j in range(6)]
    assert all(len(p) == 20 for p in picks)
    assert picks[0] == select_samples(derive_key(master, "d", "lic0"), ids, caps, 0.05, selection)  # deterministic
    assert len({tuple(sorted(p)) for p in picks}) == 6  # keyed: licensees differ
    X = caption_vectors(caps)

    def coherence(sel):  # mean caption similarity within the selected samples
        idx = [ids.index(s) for s in sel]
        S = X[idx] @ X[idx].T
        return (S.sum() - len(idx)) / (len(idx) * (len(idx) - 1))

    rnd = select_marked(derive_key(master, "d", "lic0"), ids, 0.05)
    c = [coherence(p) for p in picks]
    assert min(c) > coherence(rnd) and np.mean(c) > coherence(rnd) + 0.15, (c, coherence(rnd))


def _look_alikes(tmp_path, n=200, groups=20, seed=0):
    """``n`` images in ``groups`` background colours (plus noise): the look-alike groups are known."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(groups, 3))
    paths, group = [], []
    for i in range(n):
        g = i % groups
        im = np.clip(colours[g] + rng.normal(0, 12, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        paths.append(tmp_path / f"{i:04d}.png")
        Image.fromarray(im).save(paths[-1])
        group.append(g)
    return paths, np.array(group)


def test_visual_selection_marks_whole_look_alike_groups(tmp_path):
    paths, group = _look_alikes(tmp_path)
    ids = [p.name for p in paths]
    thumbs = image_thumbnails(paths)
    assert thumbs.shape == (200, 192)
    master = bytes(range(32))
    picks = [select_samples(derive_key(master, "d", f"lic{j}"), ids, [""] * 200, 0.1, "visual",
                            thumbnails=lambda: thumbs) for j in range(6)]
    assert all(len(p) == 20 for p in picks)
    assert picks[0] == select_samples(derive_key(master, "d", "lic0"), ids, [""] * 200, 0.1, "visual", thumbnails=thumbs)
    assert len({tuple(sorted(p)) for p in picks}) > 1  # keyed
    for p in picks:  # whole colour groups (10 images each), not a sprinkle over many
        g = group[[ids.index(s) for s in p]]
        assert len(set(g.tolist())) <= 3, np.bincount(g)
    rnd = group[[ids.index(s) for s in select_marked(derive_key(master, "d", "lic0"), ids, 0.1)]]
    assert len(set(rnd.tolist())) > 8
    with pytest.raises(TracemarkError, match="thumbnails"):
        select_samples(derive_key(master, "d", "x"), ids, [""] * 200, 0.1, "visual")
    paths[3].write_bytes(paths[3].read_bytes()[:60])  # truncated: a blank thumbnail; the writing stage, which
    blank = image_thumbnails(paths)                   # decodes every image, reports the file (or skips it)
    assert not blank[3].any() and blank[4].any()


def test_a_visual_selection_copy_is_recorded_and_rederived(registry, tmp_path):
    import shutil

    from tracemark.marking.materialize import materialize
    from tracemark.marking.protect import protect

    data = tmp_path / "data"
    data.mkdir()
    paths, _ = _look_alikes(data, n=40, groups=8)
    (data / "metadata.jsonl").write_text("".join(f'{{"file_name": "{p.name}", "text": "a square"}}\n' for p in paths))
    protect(data, tmp_path / "copy", "acme", registry=registry, workers=1, rate=0.25, selection="visual")
    assert registry.copies()[0].params["selection"] == "visual"
    issued = {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()}
    shutil.rmtree(tmp_path / "copy")
    got = materialize(registry, "acme", tmp_path / "copy", workers=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()} == issued and got.skipped == []


def test_protect_records_the_selection_and_refuses_unknown_ones(registry, sample_dir, tmp_path):
    from tracemark.marking.protect import protect

    protect(sample_dir, tmp_path / "a", "acme", registry=registry, workers=1, rate=0.1, selection="coherent")
    assert registry.copies()[0].params["selection"] == "coherent"
    from tracemark.detection.tracing import trace_files  # the recorded selection is not a scheme parameter

    v = trace_files(tmp_path / "a", registry)
    assert [s.licensee for s in v.scores] == ["acme"] and v.scores[0].n_images == 5
    with pytest.raises(TracemarkError, match="selection"):
        protect(sample_dir, tmp_path / "b", "globex", registry=registry, workers=1, selection="bogus")


def test_concept_selections_refuse_datasets_too_large_for_dense_vectors(monkeypatch):
    from tracemark.marking import selection

    monkeypatch.setattr(selection, "MAX_CONCEPT_SAMPLES", 10)
    ids = [f"{i}.png" for i in range(11)]
    with pytest.raises(TracemarkError, match="at most 10 samples"):
        select_samples(derive_key(bytes(32), "d", "x"), ids, ["a cat"] * 11, 0.5, "coherent")
    assert len(select_samples(derive_key(bytes(32), "d", "x"), ids, ["a cat"] * 11, 0.5, "random")) == 6


def _labels_sse(thumbs, labels):
    X = thumbs.astype(np.float64)
    return sum(((X[labels == c] - X[labels == c].mean(axis=0)) ** 2).sum() for c in np.unique(labels)) / len(X)


def test_streaming_visual_clusters_are_as_tight_as_the_dense_ones_and_mark_the_exact_count(tmp_path):
    """Version 2 (streaming, any size) groups look-alikes at least as well as version 1 did."""
    from tracemark.marking import selection
    from tracemark_sim.data import make_dataset
    from tracemark.io.dataset import load_dataset

    samples = load_dataset(make_dataset(tmp_path / "d", 600, "faces", seed=0)).samples
    ids = [s.file_name for s in samples]
    thumbs = image_thumbnails([s.path for s in samples])
    assert thumbs.dtype == np.uint8  # compact: 192 bytes an image
    k = round(selection.VISUAL_SPLIT / 0.05)
    old = selection._visual_labels(np.ascontiguousarray(thumbs, np.float32).tobytes(), len(ids), k)
    new = selection._visual_labels_v2(thumbs, k)
    assert _labels_sse(thumbs, new) <= 1.02 * _labels_sse(thumbs, old)
    master = bytes(range(32))
    for j in range(5):
        key = derive_key(master, "d", f"lic{j}")
        got = select_samples(key, ids, [""] * 600, 0.05, "visual", thumbnails=thumbs, selection_version=2)
        assert len(got) == 30 and len(set(got)) == 30
        assert got == select_samples(key, ids, [""] * 600, 0.05, "visual", thumbnails=thumbs.copy(),
                                     selection_version=2)
    one, two = (select_samples(derive_key(master, "d", "lic0"), ids, [""] * 600, 0.05, "visual", thumbnails=thumbs,
                               selection_version=v) for v in (1, 2))
    assert set(one) != set(two)  # another clustering: hence the recorded version
    with pytest.raises(TracemarkError, match="selection version 7"):
        select_samples(derive_key(master, "d", "x"), ids, [""] * 600, 0.05, "visual", thumbnails=thumbs,
                       selection_version=7)


def test_copies_without_a_recorded_version_keep_the_dense_clustering_and_larger_data_streams(monkeypatch):
    """A copy that recorded no ``selection_version`` re-derives with version 1 up to the old limit
    (what it was issued with); beyond it, where version 1 refused, the visual selection streams."""
    from tracemark.marking import selection

    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, size=(12, 192))
    thumbs = np.clip(centres[np.arange(240) % 12] + rng.normal(0, 10, (240, 192)), 0, 255).astype(np.uint8)
    ids = [f"{i:04d}.png" for i in range(240)]
    key = derive_key(bytes(range(32)), "d", "acme")
    pick = {v: select_samples(key, ids, [""] * 240, 0.1, "visual", thumbnails=thumbs, selection_version=v)
            for v in (None, 1, 2)}
    assert pick[None] == pick[1]
    monkeypatch.setattr(selection, "MAX_CONCEPT_SAMPLES", 100)
    assert select_samples(key, ids, [""] * 240, 0.1, "visual", thumbnails=thumbs) == pick[2]
    assert len(pick[2]) == 24
    with pytest.raises(TracemarkError, match="at most 100 samples"):
        select_samples(key, ids, [""] * 240, 0.1, "visual", thumbnails=thumbs, selection_version=1)
    with pytest.raises(TracemarkError, match="at most 100 samples"):
        select_samples(key, ids, ["a cat"] * 240, 0.1, "coherent")


def test_streaming_clusters_are_exact_integer_arithmetic_whatever_the_chunking(monkeypatch):
    """Bit-for-bit re-derivation must not hang on float summation order: the labels are the same
    whatever the chunk size (a proxy for another BLAS or thread count)."""
    from tracemark.marking import selection

    rng = np.random.default_rng(1)
    centres = rng.integers(0, 256, size=(40, 192))
    thumbs = np.clip(centres[rng.integers(0, 40, 3000)] + rng.normal(0, 25, (3000, 192)), 0, 255).astype(np.uint8)
    monkeypatch.setattr(selection, "_SUBSAMPLE", 1000)  # subsample + streaming passes, as at 10^6
    a = selection._visual_labels_v2(thumbs, 40).copy()
    selection._LABELS_V2.clear()
    monkeypatch.setattr(selection, "_CHUNK", 77)
    b = selection._visual_labels_v2(thumbs, 40)
    assert np.array_equal(a, b)
    assert len(np.unique(a)) == 40


def test_large_datasets_keep_their_thumbnails_in_a_reused_file_not_in_memory(tmp_path, monkeypatch):
    from tracemark.marking import selection

    paths, _ = _look_alikes(tmp_path, n=30, groups=3)
    small = np.array(image_thumbnails(paths))
    monkeypatch.setattr(selection, "THUMBS_IN_MEMORY", 10)
    monkeypatch.setattr(selection, "_CHUNK", 7)
    selection._THUMBS.clear()
    big = image_thumbnails(paths, cache_dir=tmp_path / "cache")
    assert isinstance(big, np.memmap) and np.array_equal(big, small)
    (cached,) = (tmp_path / "cache").iterdir()  # one file, no temporary left behind
    selection._THUMBS.clear()
    monkeypatch.setattr(selection, "_fill_thumbnails", lambda *a: pytest.fail("recomputed"))
    assert np.array_equal(image_thumbnails(paths, cache_dir=tmp_path / "cache"), small)
