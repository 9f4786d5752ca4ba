"""How a command is declared: the click classes every command and the top-level group use, and
:class:`Commands`, the Typer of one command-group module, whose ``command`` takes the help panel
and the examples that close the command's ``--help``."""

from __future__ import annotations

import enum
from typing import Any, Callable, Optional, Sequence

import typer
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: Help panels of ``tracemark --help``.
PANEL_PROTECT = "Protect and trace"
PANEL_REGISTRY = "Registry"
PANEL_MODELS = "Models"


def choices(name: str, values: Sequence[str]) -> type[enum.Enum]:
    """A str enum of a module's own tuple of choices, so --help lists them and shells complete them."""
    return enum.Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


def choice_value(choice: Any) -> Any:
    """The plain string of a choice (typer gives the enum member, or the default as given)."""
    return choice.value if isinstance(choice, enum.Enum) else choice


def examples_epilog(examples: Sequence[str]) -> str:
    """The text closing a command's --help: its examples, one a line."""
    return "\n".join(["Examples:" if len(examples) > 1 else "Example:", *(f"  {escape(e)}" for e in examples)])


class Command(TyperCommand):
    """typer's command with click's usage line (``DATA_DIR``, ``[MODEL]``: no ``{data_dir}``), no
    ``<bool>`` beside flags, and ``--json`` alone meaning ``--json -`` (standard output)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""  # a flag takes no value: no type column
            elif isinstance(p, TyperArgument) and p.metavar is None:
                p.metavar = (p.name or "").upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or p.name or "").strip("[]")
                pieces.append((name if p.required else f"[{name}]") + ("..." if p.nargs != 1 else ""))
            else:
                pieces.extend(p.get_usage_pieces(ctx))
        return pieces

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if any(isinstance(p, TyperOption) and "--json" in p.opts and not p.is_flag for p in self.params):
            args = list(args)
            for i, a in enumerate(args):
                if a == "--":
                    break
                if a == "--json" and (i + 1 == len(args) or (args[i + 1].startswith("-") and args[i + 1] != "-")):
                    args.insert(i + 1, "-")
                    break
        return super().parse_args(ctx, args)


class Group(TyperGroup):
    """A group: no ``<bool>`` beside ``--help`` / ``--version``."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""
        return params


class Commands(typer.Typer):
    """The commands of one module (``tracemark.cli.data``, ``.registry``, ...), merged into the
    top-level app by :mod:`tracemark.cli.app`; ``panel`` is their help panel unless a command names
    its own."""

    def __init__(self, panel: str) -> None:
        super().__init__()
        self.panel = panel

    def command(self, name: Optional[str] = None, *, examples: Sequence[str], panel: Optional[str] = None,
                **kw: Any) -> Callable:  # type: ignore[override]
        if not examples:
            raise ValueError("every command's --help closes with an example")
        return super().command(name, cls=Command, rich_help_panel=panel or self.panel,
                               epilog=examples_epilog(examples), **kw)
