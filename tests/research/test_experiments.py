"""Smallest cells of the experiments, so their code paths stay working (numbers are not checked
here: the experiments themselves are run on demand, see research/README.md)."""

import csv


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tracing_smallest_cell(tmp_path):
    from research.eval.tracing import main

    out = tmp_path / "tracing.csv"
    main(["--licensees", "10", "--trials", "1", "--samples", "60", "--size", "64", "--out", str(out)])
    r = rows(out)
    assert len(r) == 6 and {x["scenario"] for x in r} >= {"single", "union-3", "average-2"}
    single = next(x for x in r if x["scenario"] == "single")
    assert float(single["guilty_named_rate"]) == 1.0 and int(single["false_accusations"]) == 0


def test_learnability_smallest_cell_is_resumable(tmp_path, tiny_base):
    from research.eval.learnability import main

    args = ["--base", str(tiny_base), "--steps", "3", "--n-gen", "4", "--gen-steps", "2", "--rates", "0.1",
            "--n-data", "40", "--out", str(tmp_path / "learn.csv"), "--work", str(tmp_path / "work")]
    main(args)
    main(args)  # second run: the finished cell is skipped, not redone
    r = rows(tmp_path / "learn.csv")
    assert len(r) == 1 and r[0]["scheme"] == "spread" and float(r[0]["p"]) > 0
