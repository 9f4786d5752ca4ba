"""``tracemark sim``: the CPU test world's commands (:mod:`tracemark.sim.cli`), loaded when used.

Importing the test world imports torch (seconds), which ``tracemark --help`` and the other commands
must not pay for. So ``sim`` is listed from its name and help alone, and :mod:`tracemark.sim.cli`
is imported when click resolves ``tracemark sim ...`` (to run it, show its help or complete it in a
shell). A test world that is not installed is said in one line; one that fails to import is a
traceback, never "No such command".
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import click
import typer

from tracemark.cli.command import PANEL_TEST_WORLD, Group
from tracemark.errors import TracemarkError


class LazyGroup(Group):
    """A group listed by its name and help, whose commands come from ``load()`` (a typer app) when
    click first resolves it."""

    def __init__(self, name: str, load: Callable[[], typer.Typer], help: str, panel: str) -> None:
        super().__init__(name=name, help=help, rich_help_panel=panel)
        self._load = load
        self._loaded: Optional[click.Command] = None

    def loaded(self) -> click.Command:
        if self._loaded is None:
            self._loaded = typer.main.get_command(self._load())
        return self._loaded

    def make_context(self, info_name: Optional[str], args: list[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        # the loaded group parses, runs, prints its help and completes: this one only stands in the list
        return self.loaded().make_context(info_name, args, parent=parent, **extra)


def _load_sim() -> typer.Typer:
    try:
        from tracemark.sim.cli import app
    except ModuleNotFoundError as exc:
        if exc.name not in ("tracemark.sim", "tracemark.sim.cli"):  # a missing dependency: its traceback
            raise
        raise TracemarkError("`tracemark sim` needs the CPU test world (tracemark.sim), which is not installed "
                             "here") from None
    return app


def sim_group() -> LazyGroup:
    return LazyGroup("sim", _load_sim, "The CPU stand-in for Stable Diffusion (tiny model, synthetic data).",
                     PANEL_TEST_WORLD)
