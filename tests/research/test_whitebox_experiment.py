"""The white-box experiment's command line: countermeasure options reach the guilty fine-tunes."""

import pytest

from research.eval.whitebox import _parser, guilty_cells, main


def test_countermeasures_reach_the_cells():
    args = _parser().parse_args(["--rates", "0.05", "--seeds", "0", "1", "--selection", "visual",
                                 "--pre-attack", "jpeg:50", "--clean-x", "2", "--steps", "400", "--rank", "4"])
    cells = guilty_cells(args)
    assert [c.seed for c in cells] == [0, 1]
    c = cells[0]
    assert (c.rate, c.selection, c.pre_attack, c.clean_x, c.steps, c.rank) == (0.05, "visual", "jpeg:50", 2, 400, 4)
    # each countermeasure is its own model folder and CSV row
    assert c.name != guilty_cells(_parser().parse_args(["--rates", "0.05", "--seeds", "0", "--selection", "visual"]))[0].name


def test_dataset_size_is_its_own_group_and_shadow(tmp_path, monkeypatch):
    from research.eval import whitebox
    from research.eval.grid import group_dir

    args = _parser().parse_args(["--rates", "0.02", "--seeds", "0", "--n-data", "2000", "--steps", "1600"])
    big = guilty_cells(args)[0]
    small = guilty_cells(_parser().parse_args(["--rates", "0.02", "--seeds", "0"]))[0]
    assert big.n_data == 2000 and small.n_data == 0
    assert group_dir(tmp_path, big) != group_dir(tmp_path, small) and big.name != small.name
    # the shadow of a 2000-image owner dataset: that dataset, trained for the recipe's epochs (2 x 800 steps)
    seen = {}
    monkeypatch.setattr("research.eval.grid.owner_dataset", lambda work, domain, seed=11, n=None: seen.setdefault("n", n))
    monkeypatch.setattr("tracemark_sim.finetune", lambda data, base, out, **kw: seen.update(kw))
    _, lora = whitebox.shadow_model(tmp_path, tmp_path, seed=7, n_data=2000)
    assert lora.parent.name == "shadow-clean-lora-seed7-n2000"
    assert seen["n"] == 2000 and seen["steps"] == 1600


def test_countermeasures_refused_for_innocent_audits(capsys):
    with pytest.raises(SystemExit):
        main(["--innocent", "--rank", "4"])
    assert "--innocent" in capsys.readouterr().err


def test_null_audits_average_several_shadows_as_the_audit_does(sample_dir, tmp_path):
    """Calibration with several shadows reads one cache per shadow and averages them: shadows whose
    gradients are A and B - A give the verdicts of one shadow with B / 2, i.e. of B (the test is
    scale-free); a list of shadows with one cache is refused."""
    import numpy as np

    from research.eval.whitebox import null_audits

    rng = np.random.default_rng(0)
    shape = (50, 128, 128, 3)
    a, b = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    for name, arr in (("a", a), ("b_minus_a", b - a), ("b", b)):
        np.save(tmp_path / f"{name}.npy", arr)
    shadow = (tmp_path, None)  # never loaded: every residual comes from its cache
    kw = dict(n_audits=5, n_copies=10, rate=0.1, n_decoys=100, statistic="loss")
    two = null_audits(tmp_path, None, sample_dir, cache=[tmp_path / "a.npy", tmp_path / "b_minus_a.npy"],
                      reference=[shadow, shadow], **kw)
    one = null_audits(tmp_path, None, sample_dir, cache=tmp_path / "b.npy", reference=shadow, **kw)
    assert two["n_references"] == 2 and one["n_references"] == 1
    drop = ("n_references", "residuals_s")
    assert {k: v for k, v in two.items() if k not in drop} == {k: v for k, v in one.items() if k not in drop}
    with pytest.raises(ValueError, match="one cache per reference"):
        null_audits(tmp_path, None, sample_dir, cache=tmp_path / "a.npy", reference=[shadow, shadow], **kw)


def test_innocent_models_of_another_dataset_size(tmp_path, monkeypatch):
    """Calibration at --n-data N: the base and a clean LoRA trained on that dataset for the recipe's
    epochs, in a folder of its own (the 1000-image innocent model is not reused)."""
    from research.eval import whitebox

    seen = {}
    monkeypatch.setattr("research.eval.grid.owner_dataset", lambda work, domain, seed=11, n=None: seen.setdefault("n", n))
    monkeypatch.setattr("tracemark_sim.finetune", lambda data, base, out, **kw: seen.update(kw))
    models = whitebox.innocent_models(tmp_path, tmp_path, n_data=2000)
    assert sorted(models) == ["base", "clean-lora"]
    assert models["clean-lora"][1].parent.name == "innocent-clean-lora-n2000"
    assert seen["n"] == 2000 and seen["steps"] == 1600 and seen["seed"] == 0
