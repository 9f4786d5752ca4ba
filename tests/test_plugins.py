"""What other distributions add to tracemark through entry points (:mod:`tracemark.plugins`): the
default base model of ``tracemark finetune`` / ``tracemark shadow`` and the command groups of
``tracemark`` (the CPU test world's ``sim``), found without importing any of them by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
import typer
from click.testing import CliRunner

import tracemark.plugins as plugins_mod
from tracemark.errors import TracemarkError
from tracemark.plugins import CLI_GROUP, DEFAULT_BASE_GROUP, default_base, plugins


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """``installed(group, {name: "module:attr"}, modules={module: source})``: pretend those entry
    points are the only ones installed (modules written to a folder on sys.path)."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(group: str, eps: dict[str, str], modules: dict[str, str] | None = None) -> None:
        for name, source in (modules or {}).items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        fake = [EntryPoint(name, value, group) for name, value in eps.items()]
        monkeypatch.setattr(plugins_mod, "entry_points", lambda group: [ep for ep in fake if ep.group == group])

    return install


def _model(folder):
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return folder


def test_the_installed_test_world_declares_its_model_and_sim():
    import tracemark_sim

    assert default_base() == (tracemark_sim.BASE_MODEL, "tracemark-testworld")
    assert [ep.name for ep in plugins(CLI_GROUP)] == ["sim"]


def test_default_base_is_a_path_or_a_callable(installed, tmp_path):
    model = _model(tmp_path / "model")
    installed(DEFAULT_BASE_GROUP, {"mine": "fake_base:PATH"}, {"fake_base": f"PATH = {str(model)!r}\n"})
    assert default_base() == (model, "fake_base:PATH")  # no distribution: named by the entry point's value
    installed(DEFAULT_BASE_GROUP, {"mine": "fake_base2:where"},
              {"fake_base2": f"def where():\n    return {str(model)!r}\n"})
    assert default_base()[0] == model


def test_no_several_or_a_broken_default_base_is_one_line_asking_for_base(installed, tmp_path):
    from tracemark.diffusion.training import base_or_default

    installed(DEFAULT_BASE_GROUP, {})
    with pytest.raises(TracemarkError, match="^no base given and no default one is installed") as exc:
        base_or_default(None)
    assert "pass base, a model folder" in str(exc.value) and "\n" not in str(exc.value)
    assert base_or_default(tmp_path / "given") == tmp_path / "given"  # a given base never looks

    installed(DEFAULT_BASE_GROUP, {"a": "fake_a:P", "b": "fake_b:P"},
              {"fake_a": f"P = {str(_model(tmp_path / 'a'))!r}\n", "fake_b": f"P = {str(_model(tmp_path / 'b'))!r}\n"})
    with pytest.raises(TracemarkError, match=r"several default ones are installed \(a from .*, b from .*\): pass base, a model folder$"):
        default_base()

    installed(DEFAULT_BASE_GROUP, {"empty": "fake_empty:P"}, {"fake_empty": f"P = {str(tmp_path)!r}\n"})
    with pytest.raises(TracemarkError, match="has no model_index.json; pass base"):
        default_base()


def test_finetune_without_base_or_default_is_one_line_exit_1(tmp_path):
    """The CLI with no distribution declaring a default base: exit 1, one line that asks for --base."""
    code = ("import sys\n"
            "import tracemark.plugins as p\n"
            "p.entry_points = lambda group: []\n"
            f"sys.argv = ['tracemark', 'finetune', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
            "from tracemark.cli import main\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "200"})
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 1 and len(lines) == 1, p.stdout + p.stderr
    assert lines[0].startswith("error: no --base given and no default one is installed") \
        and lines[0].endswith("pass --base, a model folder"), lines


GROUP_SOURCE = """
    import click
    LOADED = True

    @click.group(help="ignored: the listing shows the distribution's summary")
    def app():
        pass

    @app.command()
    def hello():
        click.echo("hello from the plugin")
"""


def _top():
    from tracemark.cli import app

    return typer.main.get_command(app)


def test_a_cli_plugin_is_listed_without_import_and_loaded_when_used(installed):
    installed(CLI_GROUP, {"extra": "fake_cli:app"}, {"fake_cli": GROUP_SOURCE})
    sys.modules.pop("fake_cli", None)
    top = _top()
    listing = CliRunner().invoke(top, ["--help"], terminal_width=200)
    assert listing.exit_code == 0 and " extra " in listing.output and "Plugins" in listing.output, listing.output
    assert "fake_cli" not in sys.modules  # listed from the entry point alone
    result = CliRunner().invoke(top, ["extra", "hello"])
    assert result.exit_code == 0 and "hello from the plugin" in result.output, result.output
    assert "fake_cli" in sys.modules


def test_a_plugin_never_hides_a_product_command(installed):
    installed(CLI_GROUP, {"audit": "fake_cli_audit:app"}, {"fake_cli_audit": GROUP_SOURCE})
    top = _top()
    assert top.get_command(None, "audit").__class__.__name__ != "LazyGroup"


def test_a_plugin_that_fails_to_import_is_its_error_not_a_missing_command(installed):
    installed(CLI_GROUP, {"broken": "fake_broken:app"}, {"fake_broken": "import not_a_module_anywhere_xyz\n"})
    result = CliRunner().invoke(_top(), ["broken", "--help"])
    assert isinstance(result.exception, ModuleNotFoundError), result.output
    assert "No such command" not in result.output
