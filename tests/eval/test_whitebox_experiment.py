"""The white-box experiment's command line: countermeasure options reach the guilty fine-tunes."""

import pytest

from tracemark.eval.whitebox import _parser, guilty_cells, main


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
    from tracemark.eval import whitebox
    from tracemark.eval.grid import group_dir

    args = _parser().parse_args(["--rates", "0.02", "--seeds", "0", "--n-data", "2000", "--steps", "1600"])
    big = guilty_cells(args)[0]
    small = guilty_cells(_parser().parse_args(["--rates", "0.02", "--seeds", "0"]))[0]
    assert big.n_data == 2000 and small.n_data == 0
    assert group_dir(tmp_path, big) != group_dir(tmp_path, small) and big.name != small.name
    # the shadow of a 2000-image owner dataset: that dataset, trained for the recipe's epochs (2 x 800 steps)
    seen = {}
    monkeypatch.setattr("tracemark.eval.grid.owner_dataset", lambda work, domain, seed=11, n=None: seen.setdefault("n", n))
    monkeypatch.setattr("tracemark.sim.finetune", lambda data, base, out, **kw: seen.update(kw))
    _, lora = whitebox.shadow_model(tmp_path, tmp_path, seed=7, n_data=2000)
    assert lora.parent.name == "shadow-clean-lora-seed7-n2000"
    assert seen["n"] == 2000 and seen["steps"] == 1600


def test_countermeasures_refused_for_innocent_audits(capsys):
    with pytest.raises(SystemExit):
        main(["--innocent", "--rank", "4"])
    assert "--innocent" in capsys.readouterr().err
