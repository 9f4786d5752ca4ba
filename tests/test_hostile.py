"""The hostile-run harness (bench/hostile.py): its classifier on synthetic run records (so a harness
that flags nothing cannot pass), and one quick pass of two families through the real CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "bench" / "hostile.py"


@pytest.fixture(scope="module")
def hostile():
    spec = importlib.util.spec_from_file_location("hostile_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def run_record(hostile, expect="refuse", rc=1, err="error: x: refused\n", **kw):
    return hostile.Run("5 output-paths", "case", [sys.executable, "-m", "tracemark", "backup", "x"], "/h", expect,
                       rc=rc, err=err, **kw)


def test_classifier_flags_each_category_and_passes_a_clean_refusal(hostile, tmp_path):
    assert hostile.classify(run_record(hostile)) == {}
    assert set(hostile.classify(run_record(hostile, rc=0, err=""))) == {"silent-wrong"}
    tb = run_record(hostile, err="Traceback (most recent call last):\n  File ...\nValueError: boom\n")
    assert set(hostile.classify(tb)) == {"traceback"}
    assert set(hostile.classify(run_record(hostile, expect="ok"))) == {"failed"}
    assert hostile.classify(run_record(hostile, expect="ok", rc=-9, killed=True)) == {}
    assert set(hostile.classify(run_record(hostile, timed_out=True))) == {"failed"}

    # a master.key changed by the run is "lost"; an untouched one is not
    key = tmp_path / "master.key"
    key.write_text("00" * 32 + "\n")
    before = hostile.file_hash(key)
    same = run_record(hostile)
    hostile.check_unchanged(same, "master.key", before, hostile.file_hash(key), "lost")
    assert hostile.classify(same) == {}
    key.write_text("11" * 32 + "\n")
    changed = run_record(hostile)
    hostile.check_unchanged(changed, "master.key", before, hostile.file_hash(key), "lost")
    assert set(hostile.classify(changed)) == {"lost"}
    key.unlink()
    gone = run_record(hostile, rc=0, err="")
    hostile.check_unchanged(gone, "master.key", before, hostile.file_hash(key), "lost")
    cats = hostile.classify(gone)
    assert set(cats) == {"lost", "silent-wrong"} and "gone" in cats["lost"][0]

    # a fifo or symlink replaced by a regular file is seen (and the fifo is never opened)
    os.mkfifo(tmp_path / "fifo")
    assert hostile.file_hash(tmp_path / "fifo") == "fifo"

    summary = hostile.summarize([same, changed, gone, tb], ["5"])
    row = summary["families"]["5 output-paths"]
    assert row == {"runs": 4, "traceback": 1, "silent-wrong": 1, "lost": 2, "failed": 0}
    assert summary["totals"]["lost"] == 2 and len(summary["offending"]) == 3
    assert all(o["command"].startswith("TRACEMARK_HOME=/h tracemark backup") for o in summary["offending"])


def test_shown_commands_never_carry_raw_control_characters(hostile):
    run = hostile.Run("1", "c", [sys.executable, "-m", "tracemark", "protect", "-l", "acme\n\x1b[2J"], "/h")
    assert run.shown() == "TRACEMARK_HOME=/h tracemark protect -l $'acme\\x0a\\x1b[2J'"
    assert hostile.first_last("\x1b[31mred\n\nlast") == ("\\x1b[31mred", "last")


def test_secret_search_and_structure_tell(hostile, tmp_path):
    assert hostile.secret_hits(b"..abcd..", {"key": b"abcd", "other": b"zz"}) == ["key"]

    # PNGs laid out as libpng writes them; "marking" re-saves two with Pillow (one IDAT, no pHYs)
    src, copy = tmp_path / "src", tmp_path / "copy"
    src.mkdir(), copy.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, "PNG")
        blob = hostile.libpng_like(buf.getvalue(), extra=[(b"pHYs", (2835).to_bytes(4, "big") * 2 + b"\x01")])
        (src / f"{i}.png").write_bytes(blob)
        (copy / f"{i}.png").write_bytes(blob)
    assert hostile.telling_features(copy, src, {"0.png", "1.png"}) == []  # byte-identical: no tell
    for name in ("0.png", "1.png"):
        Image.open(src / name).save(copy / name)
    tells = {f for f, v, m in hostile.telling_features(copy, src, {"0.png", "1.png"})}
    assert {"png.idat_split", "png.ancillary"} <= tells


def test_quick_output_path_and_registry_families_run_and_report(tmp_path):
    out = tmp_path / "hostile.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--families", "5,2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert list(summary["families"]) == ["5 output-paths", "2 registry-and-key"]
    assert not summary["crashed"], summary["crashed"]
    for name, row in summary["families"].items():
        assert row["runs"] >= 8, (name, row)
    for cat in ("runs", "traceback", "silent-wrong", "lost", "failed"):
        assert summary["totals"][cat] == sum(r[cat] for r in summary["families"].values())
    assert all(o["command"] and o["why"] for o in summary["offending"])
    assert "--families 5,2" in summary["rerun"] and "rerun:" in proc.stdout and "TOTAL" in proc.stdout
    print(f"hostile --quick --families 5,2: {time.monotonic() - t0:.0f} s, totals {summary['totals']}")


def test_a_crashing_family_is_counted_and_the_script_goes_on(hostile, tmp_path, monkeypatch, capsys):
    def boom(ctx):
        ctx.note("before the crash", "lost", "synthetic finding")
        raise RuntimeError("harness bug")

    def fine(ctx):
        ctx.pseudo("a family that runs")

    monkeypatch.setitem(hostile.FAMILIES, "5", ("output-paths", boom))
    monkeypatch.setitem(hostile.FAMILIES, "2", ("registry-and-key", fine))
    out = tmp_path / "s.json"
    assert hostile.main(["--quick", "--families", "5,2", "--out", str(out)]) == 1
    summary = json.loads(out.read_text())
    assert "RuntimeError: harness bug" in summary["crashed"]["5 output-paths"]
    assert summary["families"]["5 output-paths"]["failed"] == 1 and summary["families"]["5 output-paths"]["lost"] == 1
    assert summary["families"]["2 registry-and-key"] == {"runs": 0, "traceback": 0, "silent-wrong": 0, "lost": 0,
                                                         "failed": 0}
    assert "family crashed: RuntimeError: harness bug" in capsys.readouterr().out
