"""What the command line prints (issue #30): tables that never cut a number, one JSON schema for
every verdict, exit codes that tell named from not named, help texts, audit progress."""

import json
import os
import re
import subprocess
import sys

import pytest

from registry_helpers import fix_master_key

NAMED = 3
SCHEMA = "tracemark.verdict/1"
FIELDS = ("schema", "tracemark_version", "kind", "target", "used", "named", "p_value", "alpha", "sentence", "n_images",
          "n_decoys", "licensees")  # docs/audit.md, "The verdict as JSON"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_LICENSEE = "acme_corporation_international_holdings"
LONG_DATASET = "a_rather_long_dataset_name_for_tables"


def run(*args, home, env=None):
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def world(sample_dir, tmp_path_factory):
    """A home with two copies under long names (what made the old tables cut their numbers)."""
    tmp = tmp_path_factory.mktemp("cli_out")
    home = tmp / "home"
    assert run("init", home=home).returncode == 0
    fix_master_key(home)
    for lic, extra in ((LONG_LICENSEE, []), ("beta", ["--strategy", "ambient"])):
        p = run("protect", sample_dir, "-l", lic, "-o", tmp / lic, "--rate", "0.2", "--dataset", LONG_DATASET, *extra,
                home=home)
        assert p.returncode == 0, p.stderr
    return tmp, home


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_tables_never_cut_a_number_in_80_columns(world, sample_dir, terminal):
    """Item 1: piped or in an 80-column terminal, every p-value keeps its exponent, no cell ends in '…'."""
    tmp, home = world
    env = {"COLUMNS": "80", **({"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"} if terminal else {})}
    out = tmp / f"v-{terminal}.json"
    if out.exists():
        out.unlink()
    p = run("trace-files", tmp / LONG_LICENSEE, "--data", sample_dir, "--decoys", "200", "--json", out, home=home,
            env=env)
    assert p.returncode in (0, NAMED), p.stderr  # (the exit code is the next test's)
    text = ANSI.sub("", p.stdout)
    assert "…" not in text, text
    for row in json.loads(out.read_text())["licensees"]:
        for key in ("p_value", "p_holm"):
            assert f"{row[key]:.2e}" in text, (key, row, text)
    p = run("copies", home=home, env=env)
    text = ANSI.sub("", p.stdout)
    assert p.returncode == 0 and "…" not in text, text
    rows = json.loads(run("copies", "--json", home=home).stdout)
    for r in rows:
        assert r["key_id"] in text and r["issued"] in text and r["licensee"] in text.replace("\n", ""), text
    p = run("licensees", home=home, env=env)
    text = ANSI.sub("", p.stdout)
    listed = json.loads(run("licensees", "--json", home=home).stdout)
    assert "…" not in text and all(r["since"] in text for r in listed), text


def test_every_verdict_is_one_json_document_with_exit_codes(world, sample_dir):
    """Item 2: trace-files and audit write the same versioned schema (to a file or, with `--json -`,
    standard output); exit 3 when a licensee is named, 0 when nobody is; copies / licensees --json
    print one JSON list; --json-only is a hidden alias of --json -."""
    tmp, home = world
    docs = {}
    for name, args in (("trace", ["trace-files", tmp / LONG_LICENSEE, "--data", sample_dir]),
                       ("images", ["audit", "--images", tmp / LONG_LICENSEE, "--data", sample_dir]),
                       ("images-only", ["audit", "--images", tmp / LONG_LICENSEE, "--data", sample_dir,
                                        "--json-only"])):
        p = run(*args, "--decoys", "200", *([] if name.endswith("only") else ["--json", "-"]), home=home)
        assert p.returncode == NAMED, p.stderr
        docs[name] = json.loads(p.stdout)  # nothing but the document on standard output
    p = run("trace-files", sample_dir, "--data", sample_dir, "--decoys", "200", "--json", home=home)  # --json alone
    assert p.returncode == 0, p.stderr
    docs["nobody"] = json.loads(p.stdout)
    assert not docs["nobody"]["used"] and docs["nobody"]["named"] == []
    rows = None
    for name, d in docs.items():
        assert d["schema"] == SCHEMA and list(d)[:len(FIELDS)] == list(FIELDS), name
        assert isinstance(d["sentence"], str) and d["sentence"] and isinstance(d["alpha"], float)
        keys = [sorted(r) for r in d["licensees"]]
        assert rows is None or keys[0] == rows, name  # one per-copy schema whatever the kind
        rows = keys[0]
    assert docs["trace"]["kind"] == "trace-files" and docs["images"]["kind"] == "images"
    assert docs["trace"]["named"] == [LONG_LICENSEE] == docs["images"]["named"]
    assert "scores" not in docs["trace"]
    for cmd in ("copies", "licensees"):
        listed = json.loads(run(cmd, "--json", home=home).stdout)
        assert isinstance(listed, list) and len(listed) == 2
        assert json.loads(run(cmd, "--json", "-", home=home).stdout) == listed
        lines = run(cmd, "--jsonl", home=home).stdout.splitlines()
        assert [json.loads(line) for line in lines] == listed
        p = run(cmd, "--json", tmp / f"{cmd}.json", home=home)
        assert p.returncode == 0 and json.loads((tmp / f"{cmd}.json").read_text()) == listed, p.stderr
    help_text = run("audit", "--help", home=home).stdout
    assert "--json-only" not in help_text and "--json" in help_text
    assert "3 a licensee was named" in run("--help", home=home).stdout
    from tracemark.cli.errors import EXIT_NAMED
    from tracemark.cli.verdict import VERDICT_FIELDS, VERDICT_SCHEMA

    assert (VERDICT_SCHEMA, VERDICT_FIELDS, EXIT_NAMED) == (SCHEMA, FIELDS, NAMED)


def test_help_texts_usage_choices_version_panels_examples(tmp_path):
    """Item 6: usage lines read DATA_DIR (not {data_dir}), flags show no <bool>, choices are listed
    and complete in the shell, --version, grouped panels, an example closing each command's help,
    and `tracemark --help` does not import torch."""
    from tracemark import __version__

    home = tmp_path / "home"
    p = run("--version", home=home)
    assert p.returncode == 0 and p.stdout.strip() == f"tracemark {__version__}"
    top = run("--help", home=home).stdout
    for panel in ("Protect and trace", "Registry", "Models", "Plugins"):
        assert panel in top, top
    assert top.index(" sim ") > top.index("Plugins") and " eval " not in top and "<bool>" not in top
    commands = ["init", "backup", "restore", "protect", "materialize", "licensees", "copies", "trace-files", "audit",
                "generate", "finetune", "shadow", "status", "revoke", "reissue", "import-hf"]
    for cmd in commands:
        text = run(cmd, "--help", home=home).stdout
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "{" not in usage and "[[" not in usage, usage
        assert "<bool>" not in text, (cmd, text)
        closing = [line.strip() for line in text.split("╯")[-1].strip().splitlines()]
        assert closing[0] in ("Example:", "Examples:") and all(e.startswith("tracemark ") for e in closing[1:]), \
            (cmd, text)
    protect = run("protect", "--help", home=home).stdout
    assert "protect [OPTIONS] DATA_DIR" in protect
    assert "spread|tile" in protect and "trigger|ambient" in protect and "visual" in protect
    assert "audit [OPTIONS] [MODEL]" in run("audit", "--help", home=home).stdout
    env = {**os.environ, "_TRACEMARK_COMPLETE": "complete_bash", "COMP_WORDS": "tracemark protect --scheme sp",
           "COMP_CWORD": "3"}
    script = os.path.join(os.path.dirname(sys.executable), "tracemark")  # completion keys on the program name
    p = subprocess.run([script], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.split() == ["spread", "spectral"], p.stdout + p.stderr
    p = run("protect", "x", "-l", "a", "-o", tmp_path / "o", "--scheme", "nope", home=home)
    assert p.returncode == 2 and "--scheme" in p.stderr and "Traceback" not in p.stderr, p.stderr
    code = ("import sys\nfrom tracemark.cli import main\nsys.argv = ['tracemark', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules or 'diffusers' in sys.modules, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    assert p.stderr.strip().endswith("False") and "sim" in p.stdout, p.stderr


def test_model_audits_report_progress_and_say_why_2n_images(sample_dir, tmp_path):
    """Item 5: the black-box generation and the white-box reading call progress(done, total) up to
    total (the CLI draws a bar with count and ETA from it); a black-box audit of --n 8 that runs two
    stages says so, and its JSON is the common schema."""
    pytest.importorskip("diffusers")
    from registry_helpers import seeded_registry

    from tracemark.audit.blackbox import audit_model
    from tracemark.audit.whitebox import audit_whitebox
    from tracemark.marking.protect import protect
    from tracemark_sim import build_tiny_pipeline

    home = tmp_path / "home"
    reg = seeded_registry(home)
    protect(sample_dir, tmp_path / "c_a", "a", registry=reg, rate=0.2, workers=1)
    pipe_dir = build_tiny_pipeline(tmp_path / "tiny", seed=0)
    calls = []
    res = audit_model(pipe_dir, reg, n=8, steps=2, batch_size=4, n_decoys=100, device="cpu",
                      progress=lambda d, t: calls.append((d, t)))
    assert res.params["two_stage"] and calls == [(4, 16), (8, 16), (12, 16), (16, 16)], calls
    calls.clear()
    audit_whitebox(pipe_dir, reg, sample_dir, n_decoys=100, device="cpu", statistic="residual",
                   progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] and all(t == calls[-1][1] for _, t in calls), calls
    p = run("audit", pipe_dir, "--blackbox", "--n", 8, "--steps", 2, "--decoys", 100, "--device", "cpu",
            "--json", tmp_path / "m.json", home=home)
    assert p.returncode in (0, NAMED), p.stderr
    d = json.loads((tmp_path / "m.json").read_text())
    assert d["kind"] == "model" and d["n_images"] == 16 and list(d)[:len(FIELDS)] == list(FIELDS)
    assert "two stages of --n 8" in " ".join(p.stdout.split()), p.stdout
    p = run("audit", pipe_dir, "--data", sample_dir, "--statistic", "residual", "--decoys", 100, "--device", "cpu",
            "--json", "-", home=home)
    assert p.returncode in (0, NAMED), p.stderr
    d = json.loads(p.stdout)
    assert d["kind"] == "whitebox" and list(d)[:len(FIELDS)] == list(FIELDS)
