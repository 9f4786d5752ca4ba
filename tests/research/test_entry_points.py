"""Every research entry point at its smallest size: the code paths and outputs, not the numbers
(the experiments themselves are run on demand; research/README.md)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def group(tmp_path):
    """A grid-like group folder (home/ + copies/<licensee>/) of two protected copies, and its originals."""
    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "data", n=24, size=64, seed=1)
    reg = Registry.init(tmp_path / "group" / "home")
    for lic in ("lic000", "lic001"):
        protect(data, tmp_path / "group" / "copies" / lic, lic, registry=reg, rate=0.25, workers=1)
    return tmp_path / "group", data


# --- python -m research.eval ----------------------------------------------------------------------

def test_eval_cli_lists_its_commands():
    r = subprocess.run([sys.executable, "-m", "research.eval", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for cmd in ("run", "analyze", "learnability", "calibration", "tracing"):
        assert cmd in r.stdout


def test_eval_analyze_without_results_is_a_one_line_error(tmp_path, capsys):
    from research.eval.cli import main

    with pytest.raises(SystemExit) as e:
        main(["analyze", "--grid", str(tmp_path / "none.csv")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "no grid results yet" in err and "Traceback" not in err


def test_eval_run_quick_on_one_cell(small_grid, tiny_base, tmp_path, monkeypatch):
    from research.eval.cli import main

    monkeypatch.setattr(small_grid, "plan", lambda name: [small_grid.Cell(n=8)])
    with pytest.raises(SystemExit) as e:
        main(["run", "--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
              "--base", str(tiny_base)])
    assert e.value.code == 0
    r = rows(tmp_path / "out" / "grid_quick.csv")
    assert len(r) == 1 and r[0]["scheme"] == "visible" and int(r[0]["n_licensees"]) == 4
    assert (tmp_path / "out" / "quick" / "effectiveness.csv").exists()


def test_calibration_smallest(tiny_base, tmp_path):
    from research.eval.calibration import main

    out = tmp_path / "calibration.csv"
    main(["--trials", "5", "--n", "4", "--steps", "2", "--gen-steps", "2", "--n-data", "40",
          "--base", str(tiny_base), "--work", str(tmp_path / "work"), "--out", str(out)])
    r = rows(out)
    assert [x["model"] for x in r] == ["base", "ft_clean", "ft_other_owner"]
    assert all(int(x["trials"]) == 5 and 0 <= int(x["false_positives"]) <= 5 for x in r)


def test_whitebox_guilty_smallest(small_grid, tmp_path):
    """One guilty fine-tune (2 steps of the committed base) audited by the product's white box."""
    from research.eval.whitebox import main

    out = tmp_path / "whitebox.csv"
    main(["--rates", "0.1", "--seeds", "0", "--scope", "dataset", "--steps", "2",
          "--work", str(tmp_path / "work"), "--out", str(out)])
    r = rows(out)
    assert len(r) == 1 and r[0]["model"].endswith("+loss") and r[0]["reference"] == "lora-off"
    assert int(r[0]["n_probes"]) > 0 and r[0]["named_true"] in ("True", "False")


# --- research/*.py --------------------------------------------------------------------------------

def test_copy_attack(group, tmp_path, capsys):
    from research.copy_attack import main

    gdir, data = group
    out = tmp_path / "attacks.jsonl"
    main(["--group", str(gdir), "--licensees", "lic000", "--params", "3", "--data", str(data), "--out", str(out)])
    row = json.loads(out.read_text().splitlines()[0])
    assert row["licensee"] == "lic000" and row["n_images"] == 24 and row["named_before"] is True
    assert {"z_after", "named_after", "touched", "psnr_touched"} <= set(row)


def test_key_alignment(group, capsys):
    from research.key_alignment import main

    gdir, data = group
    main(["--home", str(gdir / "home"), "--data", str(data), "--n", "12"])
    out = capsys.readouterr().out
    assert "2 keys on 12 unmarked images" in out and "lic000" in out and "lic001" in out


def test_vae_transmission(tiny_base, tmp_path, capsys):
    from research.vae_transmission import main
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "data", n=4, size=32, seed=1)
    main(["--base", str(tiny_base), "--data", str(data), "--n", "4", "spread:strength=3.2", "visible:cells=16"])
    out = capsys.readouterr().out
    assert out.count("amplitude kept") == 2 and "4 images" in out


def test_latent_gain(tiny_base, tmp_path, capsys):
    from research.latent_gain import main
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "data", n=2, size=32, seed=1)
    main(["--base", str(tiny_base), "--data", str(data), "--n", "2", "--steps", "2"])
    out = capsys.readouterr().out
    assert out.count("PSNR") == 3 and "encoder-optimised" in out


def test_results_tables_rewrites_between_markers_only(tmp_path):
    from research.results_tables import main

    res = tmp_path / "results"
    res.mkdir()
    (res / "harm.csv").write_text("model,protected,probe_acc_normal,kid_x1000_vs_real,z_leak_without_trigger\n"
                                  "m1,True,0.9,1.5,0.2\n")
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- table:harm -->\nold table\n<!-- /table -->\noutro\n")
    main(["--doc", str(doc), "--results", str(res)])
    text = doc.read_text()
    assert "old table" not in text and "| m1 | True | 0.9 | 1.5 | 0.2 |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")


@pytest.mark.parametrize("script", ["official_trainers.sh", "pretrain_base.sh", "official_lora.sh"])
def test_shell_procedures_parse(script):
    """The shell procedures need the diffusers example trainers or a network download and take
    minutes to hours: only their syntax is checked here."""
    r = subprocess.run(["bash", "-n", str(ROOT / "research" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_official_trainers_needs_its_trainers(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WORK": str(tmp_path / "work")}
    r = subprocess.run(["bash", str(ROOT / "research" / "official_trainers.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode != 0 and "TRAINERS" in r.stderr


# --- python -m research.calibrate_default ---------------------------------------------------------

def test_calibrate_default_writes_rates_with_intervals(tiny_base, tmp_path):
    """Simulated innocent audits of the default white box: one row per (strategy, model, copies)."""
    from research.calibrate_default import main
    from tracemark.diffusion.training import TINY, finetune
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "data", n=24, size=32, seed=2)
    loras = [finetune(data, tiny_base, tmp_path / f"l{i}", preset=TINY, steps=1, seed=i, progress=False)
             for i in range(2)]
    out = tmp_path / "calib.jsonl"
    main(["--data", str(data), "--base", str(tiny_base), "--shadow", str(loras[0]),
          "--innocent", f"clean={loras[1]}", "--words", "1", "--audits", "4", "--copies", "2",
          "--decoys", "50", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["strategy"], r["copies"], r["audits"]) for r in got] == [("ambient", 2, 4), ("trigger", 2, 4)]
    for r in got:
        lo, hi = r["ci95"]["0.001"]
        assert 0 <= r["false_accusation_rate"]["0.001"] <= 1 and lo <= r["false_accusation_rate"]["0.001"] <= hi
        assert r["marked"] == 2  # 2% of 24 raised towards 50, capped at 10% of the dataset
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # shadow + model, per prompt set: cached


# --- python -m research.whitebox_fit ----------------------------------------------------------------

def test_whitebox_fit_scores_three_statistics(tiny_base, tmp_path):
    """The fit-normalised white box beside the product's: one row per suspect, each statistic's z."""
    from research.whitebox_fit import main
    from tracemark.diffusion.training import TINY, finetune
    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark.audit.shadows import base_fingerprint

    data = make_sample_dataset(tmp_path / "data", n=24, size=32, seed=3)
    reg = Registry.init(tmp_path / "home")
    for lic in ("a", "b"):
        protect(data, tmp_path / f"c_{lic}", lic, registry=reg, rate=0.25, min_marked=0, workers=1)
    shadow = finetune(data, tiny_base, tmp_path / "shadow", preset=TINY, steps=1, seed=1, progress=False)
    sid = reg.add_shadow(dataset="data", base_path=str(tiny_base), base_hash=base_fingerprint(tiny_base, reg),
                         preset="tiny", seed=1, path=str(shadow), recipe={"steps": 1})
    reg.finish_shadow(sid, reg.file_digest(shadow / "pytorch_lora_weights.safetensors"))
    reg.close()
    suspect = finetune(tmp_path / "c_a", tiny_base, tmp_path / "suspect", preset=TINY, steps=1, seed=2, progress=False)
    out = tmp_path / "rows.jsonl"
    main(["--home", str(tmp_path / "home"), "--base", str(tiny_base), "--data", str(data),
          "--suspect", f"s={suspect}", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    row = json.loads(out.read_text())
    assert row["suspect"] == "s" and set(row) >= {"shadow", "fit", "loraoff", "beta"}
    assert set(row["shadow"]["z"]) == {"a", "b"}
