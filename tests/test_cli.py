"""The command line: the user's workflow, and one-line errors (no traceback) for bad input."""

import json
import os
import subprocess
import sys

import pytest

from registry_helpers import fix_master_key


def run(*args, home, check=True):
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


def test_workflow(sample_dir, tmp_path):
    home = tmp_path / "home"
    run("init", home=home)
    assert "already initialised" in run("init", home=home, check=False).stderr
    fix_master_key(home)  # who is named below must not depend on a random key (registry_helpers)
    out = run("protect", sample_dir, "--licensee", "acme", "--out", tmp_path / "acme", "--rate", "0.2", home=home).stdout
    assert "PSNR" in out and "10/50" in out
    run("protect", sample_dir, "-l", "beta", "-o", tmp_path / "beta", "--rate", "0.2", "--strategy", "ambient",
        home=home)
    assert "beta" in run("licensees", home=home).stdout
    assert "ambient" in run("copies", home=home).stdout
    p = run("trace-files", tmp_path / "beta", "--json", tmp_path / "v.json", home=home)
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["used"] and v["named"] == ["beta"] and v["p_value"] < 1e-6
    assert {"id", "licensee", "z", "p_value", "p_holm", "named"} <= set(v["scores"][0]) | {"id"}
    # scheme parameters are recorded in the registry and used again when tracing
    run("protect", sample_dir, "-l", "gamma", "-o", tmp_path / "gamma", "--rate", "0.2", "--scheme", "visible",
        "-p", "cells=16", home=home)
    run("trace-files", tmp_path / "gamma", "--json", tmp_path / "g.json", home=home)
    assert json.loads((tmp_path / "g.json").read_text())["named"] == ["gamma"]


@pytest.mark.parametrize("args,needle", [
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--scheme", "nope"], "unknown scheme"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--rate", "0"], "--rate"),
    (["protect", "{tmp}/missing", "-l", "x", "-o", "{tmp}/o"], "not found"),
    (["protect", "{data}", "-l", "x", "-o", "{data}/inside"], "inside the input"),
    (["trace-files", "{tmp}"], "no image files"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--scheme", "visible", "-p", "cells=40"], "cells must be"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--scheme", "visible", "-p", "size"], "KEY=VALUE"),
])
def test_bad_input_is_one_line_no_traceback(sample_dir, tmp_path, args, needle):
    home = tmp_path / "home"
    run("init", home=home)
    args = [a.format(data=sample_dir, tmp=tmp_path) for a in args]
    p = run(*args, home=home, check=False)
    assert p.returncode != 0
    assert needle in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert len([line for line in p.stderr.splitlines() if line.strip()]) == 1


def test_missing_registry_and_key(sample_dir, tmp_path):
    home = tmp_path / "home"
    p = run("protect", sample_dir, "-l", "x", "-o", tmp_path / "o", home=home, check=False)
    assert p.returncode == 1 and "tracemark init" in p.stderr and "Traceback" not in p.stderr
    run("init", home=home)
    (home / "master.key").unlink()
    p = run("protect", sample_dir, "-l", "x", "-o", tmp_path / "o", home=home, check=False)
    assert p.returncode == 1 and "master key" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()
