"""The experiment grid and its analyses on the smallest cells (a tiny untrained pipeline, a few
licensees, a few steps): the code paths, resumption and output schema, not the numbers."""

import csv
import json

import pytest

pytest.importorskip("diffusers")


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    from research.eval import grid
    from tracemark_sim import build_tiny_pipeline

    tmp = tmp_path_factory.mktemp("grid")
    mp = pytest.MonkeyPatch()
    mp.setattr(grid, "N_LICENSEES", 4)
    mp.setattr(grid, "N_DATA", 40)
    mp.setattr(grid, "DEFAULT_STEPS", 2)
    mp.setattr(grid, "GEN_STEPS", 2)  # sampling steps of the audits: the code paths, not the images
    base = build_tiny_pipeline(tmp / "tiny", seed=0)
    cells = [grid.Cell(n=8), grid.Cell(n=8, rate=0.0),
             grid.Cell(n=8, mix=2, pre_attack="jpeg:50"), grid.Cell(n=8, pre_attack="regen:0.2"),
             grid.Cell(scheme="warp", strategy="ambient", rate=0.2, n=8, strength=4.0),
             grid.Cell(n=8, opts="cells=16"), grid.Cell(n=8, scope="licensee")]
    grid.run(cells, tmp / "work", tmp / "grid.csv", base=base, log=lambda *a: None)
    yield tmp, cells, base, grid
    mp.undo()


@pytest.mark.slow  # seven fine-tunes and audits (~40 s); one cell: test_entry_points.py
def test_grid_rows_and_resume(grid_run):
    tmp, cells, base, grid = grid_run
    r = rows(tmp / "grid.csv")
    assert [x["scheme"] for x in r] == ["visible", "visible", "visible", "visible", "warp", "visible", "visible"]
    assert all(int(x["n_licensees"]) == 4 for x in r)
    assert r[1]["z"] == "" and r[1]["all_named"] == "False"  # the control has no guilty licensee
    assert r[2]["mix"] == "2" and (tmp / "work" / "cells" / cells[2].name / "train").is_dir()
    assert 0.0 <= float(r[0]["probe_acc_normal"]) <= 1.0
    seen = []
    grid.run(cells, tmp / "work", tmp / "grid.csv", base=base, log=seen.append)
    assert len(rows(tmp / "grid.csv")) == 7 and "7 of 7 cells done already" in seen[0]
    # scheme parameters reach the registry of their own group
    from tracemark.marking.trigger import trigger_of
    from tracemark.registry.database import Registry

    reg = Registry(grid.group_dir(tmp / "work", cells[5]) / "home")
    assert reg.copies()[0].params["cells"] == 16 and "cells16" in cells[5].name
    # a licensee-scoped group: one trigger word per copy, so the audit runs its two stages
    reg = Registry(grid.group_dir(tmp / "work", cells[6]) / "home")
    assert len({trigger_of(c, reg) for c in reg.copies()}) == 4
    assert json.loads((tmp / "work" / "cells" / cells[6].name / "audit.json").read_text())["params"]["two_stage"]


@pytest.mark.slow  # seven fine-tunes and audits (~40 s); one cell: test_entry_points.py
def test_analyses_write_csv_and_png(grid_run):
    from research.eval.analyze import ANALYSES, analyse

    tmp, *_ = grid_run
    res = analyse(tmp / "grid.csv", tmp / "work", tmp / "out", log=lambda *a: None)
    for name in ANALYSES:
        assert (tmp / "out" / f"{name}.csv").exists() and (tmp / "out" / f"{name}.png").exists(), name
    eff = {(x["scheme"], x["rate"], x["variant"]): x for x in res["effectiveness"]}
    assert eff[("visible", 0.1, "default")]["models"] == 1
    assert 0.0 <= eff[("visible", 0.1, "default")]["auroc"] <= 1.0
    assert {x["n_images"] for x in res["power"]} == {8, 16}  # 8 images per audit, and its replicate
    assert any(x["attack"] == "jpeg" for x in res["robustness_generated"])
    assert sum(x["protected"] for x in res["harm"]) == 6
    assert all(x["detector_for"].startswith("warp") for x in res["baseline"]) and len(res["baseline"]) == 7
    ts = {(x["scheme"], x["colluders"], x["variant"], x["licensees"]): x for x in res["tracing_scale"]}
    assert {n for *_, n in ts} == {10, 100, 1000, 10000}
    assert ts[("visible", 2, "mix=2,pre_attack=jpeg:50", 10)]["models"] == 1
    assert ts[("visible[cells=16]", 1, "default", 10000)]["models"] == 1


def test_add_columns_upgrades_an_old_results_csv(tmp_path):
    from research.eval.common import add_columns, append_row

    p = tmp_path / "r.csv"
    append_row(p, {"a": 1, "c": 3, "z": 9})
    append_row(p, {"a": 4, "c": 6, "z": 9})
    add_columns(p, {"a": 0, "b": "", "c": 0, "d": 7})
    assert rows(p) == [{"a": "1", "b": "", "c": "3", "d": "7", "z": "9"}, {"a": "4", "b": "", "c": "6", "d": "7", "z": "9"}]
    append_row(p, {"a": 5, "b": "x", "c": 1, "d": 2, "z": 0})  # the new header is accepted
    add_columns(p, {"a": 0})  # nothing missing: untouched
    assert len(rows(p)) == 3


def test_auroc_and_kid():
    import numpy as np

    from research.eval.analyze import auroc, kid

    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auroc(np.array([0.0]), np.array([0.0])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    assert abs(kid(a, b)) < kid(a, b + 1.0)


def test_find_cell_and_cell_model(tmp_path):
    from tracemark.errors import TracemarkError
    from research.eval import grid

    c = grid.plan("full")[-1]
    assert grid.find_cell(c.name) == c
    with pytest.raises(TracemarkError, match="not a cell"):
        grid.find_cell("nope")
    lora = grid.Cell(base="bases/b2")
    assert grid.cell_model(tmp_path, lora) == (tmp_path / "bases/b2", tmp_path / "cells" / lora.name / "model")
    full = grid.Cell(method="full")
    assert grid.cell_model(tmp_path, full) == (tmp_path / "cells" / full.name / "model", None)
    assert grid.cell_model(tmp_path, grid.Cell(), base=tmp_path / "b")[0] == tmp_path / "b"
