"""The command line: the user's workflow, and one-line errors (no traceback) for bad input."""

import json
import os
import subprocess
import sys

import pytest

from registry_helpers import fix_master_key


NAMED = 3  # exit status of a verdict that names a licensee (tracemark.cli.errors.EXIT_NAMED)


def run(*args, home, check=True, rc=0):
    """``check``: the exit status must be ``rc`` (NAMED for a verdict that names someone)."""
    env = {**os.environ, "TRACEMARK_HOME": str(home), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=300)
    if check and p.returncode != rc:
        raise AssertionError(f"exit {p.returncode}, not {rc}\n" + p.stdout + p.stderr)
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
    p = run("trace-files", tmp_path / "beta", "--json", tmp_path / "v.json", home=home, rc=NAMED)
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["used"] and v["named"] == ["beta"] and v["p_value"] < 1e-6
    assert {"id", "licensee", "z", "p_value", "p_holm", "named", "n_matched"} <= set(v["licensees"][0])
    # scheme parameters are recorded in the registry and used again when tracing
    run("protect", sample_dir, "-l", "gamma", "-o", tmp_path / "gamma", "--rate", "0.2", "--scheme", "visible",
        "-p", "cells=16", home=home)
    run("trace-files", tmp_path / "gamma", "--json", tmp_path / "g.json", home=home, rc=NAMED)
    assert json.loads((tmp_path / "g.json").read_text())["named"] == ["gamma"]
    # the strength as a scheme parameter is the --strength option (it was a traceback)
    run("protect", sample_dir, "-l", "eps", "-o", tmp_path / "eps", "--rate", "0.2", "-p", "strength=3.2", home=home)
    from tracemark.registry.database import Registry
    from tracemark.marking.schemes import scheme_params

    eps = [c for c in Registry(home).copies() if c.licensee == "eps"][0]
    assert scheme_params(eps)["strength"] == 3.2
    # a coherent selection is recorded and traced like any copy
    run("protect", sample_dir, "-l", "delta", "-o", tmp_path / "delta", "--rate", "0.2", "--selection", "coherent",
        home=home)
    rows = json.loads(run("copies", "--json", home=home).stdout)
    assert [r["licensee"] for r in rows][-1] == "delta"
    run("trace-files", tmp_path / "delta", "--json", tmp_path / "d.json", home=home, rc=NAMED)
    assert json.loads((tmp_path / "d.json").read_text())["named"] == ["delta"]


@pytest.mark.parametrize("args,needle", [
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--rate", "0"], "--rate"),
    (["protect", "{tmp}/missing", "-l", "x", "-o", "{tmp}/o"], "not found"),
    (["protect", "{data}", "-l", "x", "-o", "{data}/inside"], "inside the input"),
    (["trace-files", "{tmp}"], "no image files"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--scheme", "visible", "-p", "cells=40"], "cells must be"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--scheme", "visible", "-p", "size"], "KEY=VALUE"),
    (["protect", "{data}", "-l", "x", "-o", "{tmp}/o", "--strength", "2", "-p", "strength=3.2"],
     "--strength given twice: --strength 2 and -p strength=3.2"),
])
def test_bad_input_is_one_line_no_traceback(sample_dir, tmp_path, args, needle):
    home = tmp_path / "home"
    run("init", home=home)
    args = [a.format(data=sample_dir, tmp=tmp_path) for a in args]
    p = run(*args, home=home, check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)  # exit 1 = error (the README's promise)
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


def test_sigterm_during_protect_leaves_nothing_and_no_worker_lives_on(tmp_path):
    """Issue #15.11: a terminated protect leaves no half copy, no temp folder, no orphaned pool worker,
    and says 'interrupted'; the next run succeeds."""
    import signal
    import time

    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "big", n=400, size=128, seed=2, fmt="png")
    home = tmp_path / "home"
    run("init", home=home)
    env = {**os.environ, "TRACEMARK_HOME": str(home)}
    out = tmp_path / "out" / "copy"
    p = subprocess.Popen([sys.executable, "-m", "tracemark", "protect", str(data), "-l", "a", "-o", str(out),
                          "--rate", "1.0", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "out").glob(".copy.tracemark-tmp-*/*.png")):
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)  # returns only once every holder of the pipes is gone
    assert p.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    time.sleep(0.5)
    alive = [c for c in children if os.path.exists(f"/proc/{c}")]
    assert not alive, f"pool workers outlived their parent: {alive}"
    assert not out.exists() and not list((tmp_path / "out").glob(".copy*"))
    run("protect", data, "-l", "a", "-o", out, "--rate", "0.02", home=home)


def test_unwritable_json_or_report_is_refused_before_the_audit_is_recorded(sample_dir, tmp_path):
    """Issue #15.13: --json / --report naming a folder or a read-only place: one line, nothing recorded."""
    home = tmp_path / "home"
    run("init", home=home)
    run("protect", sample_dir, "-l", "a", "-o", tmp_path / "a", "--rate", "0.2", home=home)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")  # (root ignores permission bits: a file as parent is unwritable for all)
    for args in (["--json", tmp_path / "adir"], ["--json", tmp_path / "afile" / "v.json"]):
        p = run("trace-files", tmp_path / "a", *args, home=home, check=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr and "--json" in p.stderr, p.stderr
    p = run("audit", "--images", tmp_path / "a", "--report", tmp_path / "adir", home=home, check=False)
    assert p.returncode == 1 and "--report" in p.stderr and "Traceback" not in p.stderr, p.stderr
    from tracemark.registry.database import Registry

    assert Registry(home).conn.execute("SELECT COUNT(*) FROM audits").fetchone()[0] == 0
    assert not list(tmp_path.rglob("*.part"))


def test_out_under_a_file_is_one_line(sample_dir, tmp_path):
    """An --out that cannot be created (read-only place; as root, a file where a folder should be)."""
    home = tmp_path / "home"
    run("init", home=home)
    (tmp_path / "afile").write_text("x")
    p = run("protect", sample_dir, "-l", "a", "-o", tmp_path / "afile" / "copy", home=home, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "afile" in p.stderr, p.stderr


def test_audit_cli_images_json_report_and_usage_errors(sample_dir, tmp_path):
    """The audit command on images: the black-box path end to end, and its one-line usage errors."""
    home = tmp_path / "home"
    run("init", home=home)
    fix_master_key(home)
    run("protect", sample_dir, "-l", "acme", "-o", tmp_path / "acme", "--rate", "0.3", home=home)
    p = run("audit", "--images", tmp_path / "acme", "--data", sample_dir, "--json", tmp_path / "a.json",
            "--report", tmp_path / "a.html", home=home, rc=NAMED)
    d = json.loads((tmp_path / "a.json").read_text())
    assert d["kind"] == "images" and d["named"] == ["acme"] and d["params"]["data"] == str(sample_dir)
    assert "Watermark detected" in p.stdout and (tmp_path / "a.html").read_text().startswith("<!doctype html>")
    for args, needle in (([tmp_path, "--images", tmp_path], "exactly one of"),
                         (["--model", tmp_path, "--images", tmp_path], "exactly one of"),
                         ([tmp_path, "--model", tmp_path], "give the model once"),
                         (["--images", tmp_path / "acme", "--lora", tmp_path], "--lora needs MODEL"),
                         ([tmp_path, "--whitebox", "--blackbox"], "not both"),
                         ([tmp_path, "--dataset", "other"], "not in the registry"),
                         (["--images", tmp_path / "acme", "--base", tmp_path], "--base is an option of the white box"),
                         (["--images", tmp_path / "acme", "--statistic", "loss"], "--statistic is an option of the white"),
                         (["--images", tmp_path / "acme", "--max-probes-per-copy", 3],
                          "--max-probes-per-copy is an option of the white"),
                         (["--images", tmp_path / "acme", "--reference", tmp_path], "--reference needs MODEL"),
                         ([tmp_path, "--blackbox", "--reference", tmp_path, "--reference", tmp_path],
                          "several --reference are a white-box option")):
        p = run("audit", *args, home=home, check=False)
        assert p.returncode == 1 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def _digests(*paths):
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("case", ["backup-key", "backup-registry", "json-key", "json-registry", "report-key",
                                  "backup-metadata", "backup-existing", "backup-symlink", "backup-fifo",
                                  "json-existing"])
def test_outputs_never_replace_the_key_the_registry_or_a_users_file(sample_dir, tmp_path, case):
    """Issue #27.1: an output path inside the home, onto an existing file (without --force), a symlink
    or a special file is refused in one line; the key, the registry and the user's files are unchanged."""
    home = tmp_path / "home"
    run("init", home=home)
    run("protect", sample_dir, "-l", "a", "-o", tmp_path / "a", "--rate", "0.2", home=home)
    (tmp_path / "mine.txt").write_text("the user's notes")
    target = {"backup-key": home / "master.key", "backup-registry": home / "registry.sqlite",
              "json-key": home / "master.key", "json-registry": home / "registry.sqlite",
              "report-key": home / "master.key", "backup-metadata": sample_dir / "metadata.jsonl",
              "backup-existing": tmp_path / "mine.txt", "backup-symlink": tmp_path / "link",
              "backup-fifo": tmp_path / "fifo", "json-existing": tmp_path / "mine.txt"}[case]
    if case == "backup-symlink":
        target.symlink_to(tmp_path / "mine.txt")
    if case == "backup-fifo":
        os.mkfifo(target)
    watched = [home / "master.key", home / "registry.sqlite", sample_dir / "metadata.jsonl", tmp_path / "mine.txt"]
    before = _digests(*watched)
    cmd = {"backup": ["backup", target], "json": ["trace-files", tmp_path / "a", "--json", target],
           "report": ["audit", "--images", tmp_path / "a", "--report", target]}[case.split("-")[0]]
    p = run(*cmd, home=home, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
    assert len([line for line in p.stderr.splitlines() if line.strip()]) == 1, p.stderr
    assert _digests(*watched) == before
    if case == "backup-symlink":
        assert target.is_symlink()
    if case == "backup-fifo":
        import stat

        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    if case in ("backup-existing", "json-existing"):  # --force is the way to overwrite a file of one's own
        run(*cmd, "--force", home=home, rc=NAMED if case == "json-existing" else 0)
        assert _digests(target) != {str(target): before[str(target)]}


def test_json_dash_prints_to_standard_output(sample_dir, tmp_path):
    """`--json -` prints the verdict instead of writing a file named '-'."""
    home = tmp_path / "home"
    run("init", home=home)
    run("protect", sample_dir, "-l", "a", "-o", tmp_path / "a", "--rate", "0.2", home=home)
    p = subprocess.run([sys.executable, "-m", "tracemark", "trace-files", str(tmp_path / "a"), "--json", "-"],
                       capture_output=True, text=True, env={**os.environ, "TRACEMARK_HOME": str(home)},
                       cwd=tmp_path, timeout=300)
    assert p.returncode == NAMED, p.stderr
    assert json.loads(p.stdout)["kind"] == "trace-files" and not (tmp_path / "-").exists()


def test_restore_into_a_fresh_home_and_warns_of_copies_missing_from_the_backup(sample_dir, tmp_path):
    """Issue #27.3 (and the fresh-home restore): restore names the copies the backup lacks and keeps them."""
    home = tmp_path / "home"
    run("init", home=home)
    run("backup", tmp_path / "old.bak", home=home)
    run("protect", sample_dir, "-l", "a", "-o", tmp_path / "a", "--rate", "0.2", home=home)
    run("backup", tmp_path / "new.bak", home=home)
    p = run("restore", tmp_path / "old.bak", home=home)
    assert "data/a" in p.stderr and "replaced" in p.stdout, p.stdout + p.stderr
    fresh = tmp_path / "fresh"
    p = run("restore", tmp_path / "new.bak", home=fresh)
    assert (fresh / "registry.sqlite").exists()
    p = run("trace-files", tmp_path / "a", home=fresh, check=False)  # the key is kept apart from the backup
    assert p.returncode == 1 and "put your copy of master.key back" in p.stderr and "init" not in p.stderr, p.stderr


def test_out_folders_inside_the_home_or_through_a_symlink_are_refused(sample_dir, tmp_path):
    """Issue #27.1: `--out` and `--keep-images` never write into the tracemark home or through a symlink."""
    home = tmp_path / "home"
    run("init", home=home)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for out, needle in ((home / "copy", "inside the tracemark home"), (tmp_path / "link", "symbolic link")):
        p = run("protect", sample_dir, "-l", "a", "-o", out, home=home, check=False)
        assert p.returncode == 1 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (home / "copy").exists() and not list(home.glob(".copy*"))
    p = run("audit", "--images", sample_dir, "--keep-images", home / "imgs", home=home, check=False)
    assert p.returncode == 1 and "inside the tracemark home" in p.stderr, p.stderr


def test_status_revoke_reissue_and_backup_with_key_from_the_command_line(sample_dir, tmp_path):
    """Issue #30.3/30.4 through the CLI: status, revoke, reissue, backup --with-key into a fresh home."""
    home = tmp_path / "home"
    run("init", home=home)
    run("protect", sample_dir, "-l", "acme", "-o", tmp_path / "a0", "--rate", "0.2", home=home)
    p = run("protect", sample_dir, "-l", "acme", "-o", tmp_path / "again", "--rate", "0.2", home=home, check=False)
    assert p.returncode == 1 and "tracemark reissue" in p.stderr
    p = run("reissue", "acme", "--out", tmp_path / "a1", home=home)
    assert "Reissued" in p.stdout and (tmp_path / "a1").is_dir()
    listing = json.loads(run("copies", "--json", "-", home=home).stdout)
    assert [r["status"] for r in listing] == ["revoked", "issued (gen 1)"]
    p = run("trace-files", tmp_path / "a0", "--json", "-", home=home, check=False)
    assert p.returncode == 3 and json.loads(p.stdout)["named"] == ["acme"]  # the revoked copy is still traced
    run("revoke", "acme", "--reason", "licence ended", home=home)
    st = json.loads(run("status", "--json", home=home).stdout)
    assert st["copies"] == 0 and st["integrity"] == "ok" and st["master_key"].startswith("ok")
    p = run("backup", tmp_path / "all.bak", "--with-key", home=home)
    assert "holds the master key" in p.stderr
    p = run("restore", tmp_path / "all.bak", home=tmp_path / "fresh")
    assert "master key carried by the backup" in p.stdout
    p = run("trace-files", tmp_path / "a1", "--json", "-", home=tmp_path / "fresh", check=False)
    assert p.returncode == 3 and json.loads(p.stdout)["named"] == ["acme"]


def test_library_errors_name_arguments_and_the_cli_names_flags(sample_dir, tmp_path):
    """A Python caller reads the argument it passed (min_marked, n_decoys), a command-line user the
    flag they typed (--min-marked, --decoys): one message, mapped in tracemark.cli.errors."""
    from registry_helpers import seeded_registry

    from tracemark.audit.blackbox import audit_model
    from tracemark.errors import TracemarkError
    from tracemark.marking.protect import protect

    home = tmp_path / "home"
    reg = seeded_registry(home)
    cases = [  # (Python call, its message, the same mistake on the command line, its message)
        (lambda: protect(sample_dir, tmp_path / "o", "acme", registry=reg, min_marked=-1),
         "min_marked must be a whole number >= 0, got -1",
         ["protect", sample_dir, "-l", "acme", "-o", tmp_path / "o", "--min-marked", "-1"],
         "--min-marked must be a whole number >= 0, got -1"),
        (lambda: audit_model(tmp_path / "no_such_model", reg, n_decoys=5),
         "n_decoys must be an integer >= 100, got 5",
         ["audit", "--images", sample_dir, "--decoys", "5"],
         "--decoys must be an integer >= 100, got 5"),
        (lambda: protect(sample_dir, tmp_path / "o", "acme", registry=reg, strength=2, scheme_params={"strength": 3.2}),
         "strength given twice: strength 2 and scheme_params strength=3.2",
         ["protect", sample_dir, "-l", "acme", "-o", tmp_path / "o", "--strength", "2", "-p", "strength=3.2"],
         "--strength given twice: --strength 2 and -p strength=3.2"),
    ]
    for call, said, args, flagged in cases:
        with pytest.raises(TracemarkError) as exc:
            call()
        assert str(exc.value) == said and "--" not in said
        p = run(*args, home=home, check=False)
        assert p.returncode == 1 and p.stderr.strip() == f"error: {flagged}", p.stderr
    assert not (tmp_path / "o").exists() and reg.copies() == []


def test_error_messages_map_each_param_to_its_flag():
    """Each param becomes its flag where it stands as a word: not inside a path, a file name, a quoted
    value, ``key=value`` or another name (``reference`` in ``reference_lora``); only the params listed."""
    from tracemark.cli.errors import FLAGS, error_message, flag
    from tracemark.errors import TracemarkError

    def said(message, *params):
        return error_message(TracemarkError(message, params=params))

    assert said("give base or reference, not both", "base", "reference") == "give --base or --reference, not both"
    assert said("/data/force: already exists; pass force to overwrite it", "force") == \
        "/data/force: already exists; pass --force to overwrite it"
    assert said("force.json: already exists; pass force", "force") == "force.json: already exists; pass --force"
    assert said("give one reference_lora per reference (got 1 reference and 2 reference_lora)",
                "reference_lora", "reference") == \
        "give one --reference-lora per --reference (got 1 --reference and 2 --reference-lora)"
    assert said("strength given twice: strength 2 and scheme_params strength=3.2", "strength", "scheme_params") == \
        "--strength given twice: --strength 2 and -p strength=3.2"
    assert said("id_column 'id_column' is not unique", "id_column") == "--id-column 'id_column' is not unique"
    assert said("several datasets have copies (a, b): give dataset", "dataset") == \
        "several datasets have copies (a, b): give --dataset"
    assert said("n must be positive, got 0; steps as given", "n") == "--n must be positive, got 0; steps as given"
    assert said("licensee 'acme' holds copies of several datasets (x, y); pass dataset") == \
        "licensee 'acme' holds copies of several datasets (x, y); pass dataset"  # no params: as is
    assert error_message(ValueError("min_marked")) == "min_marked"
    import pickle  # an error raised in a worker process keeps its params

    back = pickle.loads(pickle.dumps(TracemarkError("rate must be in (0, 1], got 0", params=("rate",))))
    assert error_message(back) == "--rate must be in (0, 1], got 0"
    assert [flag(p) for p in ("n_decoys", "data_dir", "dataset_name", "scheme_params", "fmt", "min_marked", "n")] == \
        ["--decoys", "--data", "--dataset", "-p", "--format", "--min-marked", "--n"]
    assert all(f != "--" + p.replace("_", "-") for p, f in FLAGS.items())  # the table holds exceptions only


def _library_params() -> set[str]:
    """Every name a library module lists in ``params=(...)`` of a TracemarkError, and the ones its
    helpers are handed (check_name, check_column, pick_column, check_generation_options, hf.py)."""
    import ast
    from pathlib import Path

    import tracemark

    root = Path(tracemark.__file__).parent
    names = {"licensee", "dataset_name", "caption_column", "image_column", "id_column", "split", "n", "steps",
             "batch_size"}
    for path in root.rglob("*.py"):
        if "cli" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "params" and isinstance(node.value, ast.Tuple):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return names


def test_every_param_a_library_error_names_is_a_flag_of_the_cli():
    """The flag each param maps to (tracemark.cli.errors.flag) is an option some command takes: a
    param the CLI passes under another name (--decoys for n_decoys) must be in FLAGS."""
    import typer

    from tracemark.cli.app import app
    from tracemark.cli.errors import flag

    group = typer.main.get_command(app)
    opts = {o for cmd in group.commands.values() for p in getattr(cmd, "params", []) for o in
            getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    params = _library_params()
    assert {"min_marked", "n_decoys", "data_dir", "base", "reference"} <= params
    assert {p: flag(p) for p in params if flag(p) not in opts} == {}
