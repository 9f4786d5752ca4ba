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


def test_countermeasures_refused_for_innocent_audits(capsys):
    with pytest.raises(SystemExit):
        main(["--innocent", "--rank", "4"])
    assert "--innocent" in capsys.readouterr().err
