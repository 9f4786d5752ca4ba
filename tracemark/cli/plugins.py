"""Command groups other distributions add to ``tracemark`` (entry-point group
``tracemark.cli_plugins``, :mod:`tracemark.plugins`), loaded when used: the CPU test world's ``sim``.

A plugin may import torch (seconds), which ``tracemark --help`` and the other commands must not pay
for. So each is listed from its entry point's name and its distribution's summary alone, and its
module is imported when click resolves ``tracemark NAME ...`` (to run it, show its help or complete
it in a shell). A plugin that fails to import is a traceback, never "No such command"; one that is
not installed is not listed.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, Callable, Optional

import click
import typer

from tracemark.cli.command import Group
from tracemark.plugins import CLI_GROUP, plugins, summary

#: Help panel of the plugins' command groups in ``tracemark --help``.
PANEL_PLUGINS = "Plugins"


class LazyGroup(Group):
    """A group listed by its name and help, whose commands come from ``load()`` (a typer app or a
    click command) when click first resolves it."""

    def __init__(self, name: str, load: Callable[[], Any], help: str, panel: str) -> None:
        super().__init__(name=name, help=help, rich_help_panel=panel)
        self._load = load
        self._loaded: Optional[click.Command] = None

    def loaded(self) -> click.Command:
        if self._loaded is None:
            obj = self._load()
            self._loaded = typer.main.get_command(obj) if isinstance(obj, typer.Typer) else obj
        return self._loaded

    def make_context(self, info_name: Optional[str], args: list[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        # the loaded group parses, runs, prints its help and completes: this one only stands in the list
        return self.loaded().make_context(info_name, args, parent=parent, **extra)


def plugin_group(ep: EntryPoint) -> LazyGroup:
    """The command group of the entry point ``ep``, named after it, loaded when used."""
    return LazyGroup(ep.name, ep.load, summary(ep) or f"Commands of {ep.value}.", PANEL_PLUGINS)


def plugin_groups() -> list[LazyGroup]:
    """The command groups of the installed plugins, by name."""
    return [plugin_group(ep) for ep in plugins(CLI_GROUP)]
