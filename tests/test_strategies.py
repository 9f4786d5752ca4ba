"""Which samples a copy marks: keyed random subsets, keyed caption clusters, keyed look-alike images."""

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.keys import derive_key
from tracemark.strategies import caption_vectors, image_thumbnails, select_marked, select_samples


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
    paths[3].write_bytes(paths[3].read_bytes()[:60])  # truncated: a one-line error naming the file
    with pytest.raises(TracemarkError, match="0003.png: cannot read"):
        image_thumbnails(paths)


def test_a_visual_selection_copy_is_recorded_and_rederived(registry, tmp_path):
    import shutil

    from tracemark.materialize import materialize
    from tracemark.protect import protect

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
    from tracemark.protect import protect

    protect(sample_dir, tmp_path / "a", "acme", registry=registry, workers=1, rate=0.1, selection="coherent")
    assert registry.copies()[0].params["selection"] == "coherent"
    from tracemark.trace import trace_files  # the recorded selection is not a scheme parameter

    v = trace_files(tmp_path / "a", registry)
    assert [s.licensee for s in v.scores] == ["acme"] and v.scores[0].n_images == 5
    with pytest.raises(TracemarkError, match="selection"):
        protect(sample_dir, tmp_path / "b", "globex", registry=registry, workers=1, selection="bogus")


def test_concept_selections_refuse_datasets_too_large_for_dense_vectors(monkeypatch):
    import tracemark.strategies as strategies

    monkeypatch.setattr(strategies, "MAX_CONCEPT_SAMPLES", 10)
    ids = [f"{i}.png" for i in range(11)]
    with pytest.raises(TracemarkError, match="at most 10 samples"):
        select_samples(derive_key(bytes(32), "d", "x"), ids, ["a cat"] * 11, 0.5, "coherent")
    assert len(select_samples(derive_key(bytes(32), "d", "x"), ids, ["a cat"] * 11, 0.5, "random")) == 6
