"""The README's quickstart and Python example run as written.

Each tested block is the fenced block right after a ``<!-- test: NAME -->`` comment in README.md. The
shell blocks run through ``bash -eu`` (every command must exit 0; a verdict's exit 3 only where the
README writes ``|| test $? -eq 3``) in a temporary folder with ``TRACEMARK_HOME`` there and this
interpreter's ``tracemark`` and ``python`` first on PATH; the Python block runs twice in a row. The
model block (shadow, fine-tune, audit: minutes) runs only under ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(name: str) -> str:
    """The fenced block that follows ``<!-- test: name -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- test: {re.escape(name)} -->\s*\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no fenced block marked <!-- test: {name} -->"
    return m.group(1) + "\n"


def env_for(folder: Path) -> dict[str, str]:
    """The README's environment: tracemark and python from this venv, the registry inside ``folder``."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "TRACEMARK_HOME": str(folder / "tracemark-home"), "TMPDIR": str(folder), "HOME": str(folder),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "120"}


def run_shell(block: str, folder: Path, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-eu", "-c", block], cwd=folder, env=env_for(folder), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"README block failed (exit {proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def test_quickstart_runs_as_written(tmp_path):
    run_shell(readme_block("quickstart"), tmp_path, timeout=300)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    # what the README says it prints: globex named, p far below 1e-10
    assert verdict["schema"] == "tracemark.verdict/1"
    assert verdict["named"] == ["globex"]
    assert verdict["p_value"] < 1e-10


def test_python_example_runs_twice_in_a_temporary_folder(tmp_path):
    code = readme_block("python")
    assert "/secure" not in code
    before = set(tmp_path.iterdir())
    for run in range(2):
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, f"run {run + 1}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "globex" in proc.stdout
    # it wrote only its own temporary folders (TMPDIR is tmp_path here), one per run
    new = set(tmp_path.iterdir()) - before
    assert len(new) == 2 and all(p.name.startswith("tracemark-example-") for p in new), sorted(map(str, new))


@pytest.mark.slow
def test_model_path_runs_as_written(tmp_path):
    """The quickstart, then the model block (shadow, an abuser's LoRA, the audit) in the same folder."""
    run_shell(readme_block("quickstart"), tmp_path, timeout=300)
    run_shell(readme_block("model"), tmp_path, timeout=3600)
    assert (tmp_path / "evidence.html").stat().st_size > 0
