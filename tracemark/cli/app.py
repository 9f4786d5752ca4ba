"""The ``tracemark`` program: assembles the command groups, and nothing else.

Every command is declared in the module of its group (:mod:`~tracemark.cli.data`,
:mod:`~tracemark.cli.registry`, :mod:`~tracemark.cli.audit`, :mod:`~tracemark.cli.models`), the
command groups of installed plugins (the CPU test world's ``sim``) in :mod:`~tracemark.cli.plugins`
(listed from their entry points, loaded when used); shared options in
:mod:`~tracemark.cli.options`; errors and exit status in :mod:`~tracemark.cli.errors`. All are
imported here, whatever the command line: a module that fails to import is a traceback at startup.
None imports torch or diffusers: the commands that need them import them when they run.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from tracemark.cli import audit, data, errors, models, registry
from tracemark.cli.command import Group
from tracemark.cli.plugins import plugin_groups
from tracemark.version import __version__

HELP = "Watermark image-caption datasets; detect and trace fine-tuning on them."


class _TopLevel(Group):
    """The top-level group: the typer commands, then the plugins' groups, loaded when used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for group in plugin_groups():
            if group.name not in self.commands:  # a plugin never hides a command of the product
                self.add_command(group)


app = typer.Typer(
    name="tracemark",
    cls=_TopLevel,
    help=HELP,
    epilog=errors.EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion: choices (--scheme, --strategy, ...) complete in the shell
)
for group in (registry, data, audit, models):  # their commands, in this order within each help panel
    app.add_typer(group.app)


def _print_version(value: bool) -> None:
    if value:
        print(f"tracemark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Watermark image-caption datasets; detect and trace fine-tuning on them."""


def main() -> None:
    """The console script ``tracemark``."""
    # transformers / diffusers warn about optional backends tracemark never uses
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    errors.run(app)
