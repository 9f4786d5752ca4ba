"""Which samples a copy marks: keyed random subsets and keyed caption clusters."""

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.keys import derive_key
from tracemark.strategies import caption_vectors, select_marked, select_samples


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
