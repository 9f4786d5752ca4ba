"""Render the ``tracemark`` command-line reference (docs/cli.md) from the program itself.

    python docs/cli_reference.py > docs/cli.md     # write the reference
    python docs/cli_reference.py --check           # exit 1 when docs/cli.md differs from the program

The reference is generated, never edited by hand: every command's usage line, description,
arguments and options (name, type, default, help) and examples come from the typer app that the
``tracemark`` console script runs, through click's introspection (the command group's
``commands``, each command's ``params``). The app is found from the console script's target in
pyproject.toml (``[project.scripts] tracemark = "tracemark.cli:main"``: the module's ``app``), so
moving the modules behind it does not break this script. Importing the app imports neither torch
nor diffusers.

Hidden options (aliases kept for old scripts) and command groups added by installed plugins (such
as the CPU test world's ``sim``) are left out: the reference is the same wherever it is generated.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).resolve().parent / "cli.md"
PROGRAM = "tracemark"
REGENERATE = "python docs/cli_reference.py > docs/cli.md"


def _script_target() -> str:
    """``module:function`` of the ``tracemark`` console script, from pyproject.toml."""
    try:
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as fh:
            return tomllib.load(fh)["project"]["scripts"][PROGRAM]
    except (OSError, KeyError, ImportError):
        return "tracemark.cli:main"


def load_app() -> Any:
    """The typer app behind the console script (its module's ``app``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(_script_target().partition(":")[0])
    app = getattr(module, "app", None)
    if app is None:  # the script's module exports only main(): fall back to the package's public name
        from tracemark.cli import app
    return app


def root_command(app: Any) -> Any:
    """The click command group typer builds from ``app``."""
    import typer

    return typer.main.get_command(app)


def context(command: Any, name: str, parent: Any = None) -> Any:
    """A click context for ``command`` (of typer's click, whichever click that is)."""
    return command.context_class(command, info_name=name, parent=parent)


# --- one parameter ---------------------------------------------------------------------------------

def _is_flag(p: Any) -> bool:
    return bool(getattr(p, "is_flag", False))


def _type(p: Any, ctx: Any) -> str:
    """The value a parameter takes, as ``--help`` shows it: choices ``a|b``, ``path``, ``int``, ..."""
    if _is_flag(p):
        return ""
    if getattr(p, "metavar", None) and getattr(p, "param_type_name", "") == "option":
        return str(p.metavar)  # an explicit metavar such as FILE|-
    display = getattr(p, "display_type", None)
    if callable(display):  # typer's own rendering (<path>, <spread|tile|...>, <list[str]>)
        try:
            shown = str(display(ctx))
        except TypeError:  # another typer: no context argument
            shown = ""
        label = shown[1:-1] if shown.startswith("<") and shown.endswith(">") else shown
        if label:
            if getattr(p, "multiple", False) and label.startswith("list[") and label.endswith("]"):
                label = label[5:-1]  # one value per use; "Repeatable." says the rest
            return label.replace("Path", "path")
    t = getattr(p, "type", None)
    choices = getattr(t, "choices", None)
    if choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    return str(getattr(t, "name", "") or "").lower()


def _default(p: Any) -> str:
    """The default as a user types it; empty when there is none worth showing."""
    if getattr(p, "required", False):
        return ""
    value = getattr(p, "default", None)
    if callable(value):
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if _is_flag(p):
        if value is None:
            return ""
        if getattr(p, "secondary_opts", None):
            return (p.opts[0] if value else p.secondary_opts[0])
        return "on" if value else "off"
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(getattr(v, "value", v)) for v in value)
    return str(value)


def option_names(p: Any) -> str:
    """``--out``, ``-o``; a boolean pair as ``--flip / --no-flip``."""
    opts = sorted(p.opts, key=lambda o: (not o.startswith("--"), o))
    names = ", ".join(opts)
    if getattr(p, "secondary_opts", None):
        names += " / " + ", ".join(p.secondary_opts)
    return names


def _help(p: Any) -> str:
    text = " ".join((getattr(p, "help", None) or "").split())
    notes = []
    if getattr(p, "multiple", False) and "repeatable" not in text.lower():
        notes.append("Repeatable.")
    if getattr(p, "required", False) and getattr(p, "param_type_name", "") == "option":
        notes.append("Required.")
    envvar = getattr(p, "envvar", None)
    if envvar:
        envs = [envvar] if isinstance(envvar, str) else list(envvar)
        notes.append("Environment: " + ", ".join(f"`{e}`" for e in envs) + ".")
    return " ".join([text, *notes]).strip()


def _cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped (also inside code spans, as GFM tables need)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _unescape_rich(text: str) -> str:
    """Examples are escaped for rich's markup in ``--help`` (``\\[``); the reference shows them as typed."""
    return text.replace("\\[", "[")


def visible_params(command: Any, ctx: Any) -> list:
    return [p for p in command.get_params(ctx)
            if not getattr(p, "hidden", False) and p.name != "help"]


# --- one command -----------------------------------------------------------------------------------

def _usage(command: Any, ctx: Any, path: str) -> str:
    return " ".join([path, *command.collect_usage_pieces(ctx)])


def _description(command: Any) -> tuple[str, str]:
    """(first paragraph, the rest) of a command's help."""
    text = inspect.cleandoc(command.help or "").replace("\b\n", "")
    first, _, rest = text.partition("\n\n")
    return " ".join(first.split()), "\n\n".join(" ".join(par.split()) for par in rest.split("\n\n") if par.strip())


def _examples(command: Any) -> list[str]:
    lines = [line.strip() for line in (command.epilog or "").splitlines()]
    return [_unescape_rich(line) for line in lines if line and not line.rstrip(":").lower().startswith("example")]


def _params_tables(params: list, ctx: Any) -> list[str]:
    out: list[str] = []
    arguments = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    if arguments:
        out += ["**Arguments**", "", "| argument | type | required | description |", "|---|---|---|---|"]
        for p in arguments:
            name = (p.metavar or p.name or "").strip("[]").upper()
            out.append(f"| {_cell(_code(name))} | {_cell(_code(_type(p, ctx)))} | "
                       f"{'yes' if p.required else 'no'} | {_cell(_help(p))} |")
        out.append("")
    options = [p for p in params if getattr(p, "param_type_name", "") == "option"]
    panels: dict[str, list] = {}
    for p in options:
        panels.setdefault(getattr(p, "rich_help_panel", None) or "Options", []).append(p)
    for panel, members in panels.items():
        title = "Options" if panel == "Options" else f"Options: {panel.lower()}"
        out += [f"**{title}**", "", "| option | type | default | description |", "|---|---|---|---|"]
        for p in members:
            out.append(f"| {_cell(_code(option_names(p)))} | {_cell(_code(_type(p, ctx)))} | "
                       f"{_cell(_code(_default(p)))} | {_cell(_help(p))} |")
        out.append("")
    return out


def _command_section(name: str, command: Any, parent_ctx: Any) -> list[str]:
    ctx = context(command, name, parent_ctx)
    first, rest = _description(command)
    out = [f"## `{PROGRAM} {name}`", "", first, ""]
    if rest:
        out += [rest, ""]
    out += ["```", _usage(command, ctx, f"{PROGRAM} {name}"), "```", ""]
    out += _params_tables(visible_params(command, ctx), ctx)
    examples = _examples(command)
    if examples:
        out += ["**Examples**" if len(examples) > 1 else "**Example**", "", "```bash", *examples, "```", ""]
    return out


def product_commands(root: Any, ctx: Any) -> list[tuple[str, Any]]:
    """The commands of the program itself, in ``--help`` order (by panel, then as declared);
    command groups (the plugins') are left out."""
    names = root.list_commands(ctx) if hasattr(root, "list_commands") else list(root.commands)
    commands = [(n, root.commands[n]) for n in names if n in root.commands]
    commands = [(n, c) for n, c in commands if not hasattr(c, "commands") and not getattr(c, "hidden", False)]
    panels: dict[str, list] = {}
    for n, c in commands:
        panels.setdefault(getattr(c, "rich_help_panel", None) or "Commands", []).append((n, c))
    return [item for members in panels.values() for item in members]


def render(app: Any | None = None) -> str:
    """The whole reference, as Markdown."""
    root = root_command(app if app is not None else load_app())
    ctx = context(root, PROGRAM)
    commands = product_commands(root, ctx)
    out = [f"# `{PROGRAM}` command-line reference", "",
           f"<!-- Generated by docs/cli_reference.py from the program itself: do not edit. Regenerate with "
           f"`{REGENERATE}`; tests/test_docs.py fails when this file is stale. -->", "",
           " ".join(inspect.cleandoc(root.help or "").split()), "",
           "```", _usage(root, ctx, PROGRAM), "```", ""]
    out += ["| panel | command | what it does |", "|---|---|---|"]
    for name, command in commands:
        panel = getattr(command, "rich_help_panel", None) or ""
        out.append(f"| {_cell(panel)} | [`{name}`](#{_anchor(name)}) | {_cell(_description(command)[0])} |")
    out.append("")
    if root.epilog:
        out += [" ".join(root.epilog.split()), ""]
    out += _params_tables(visible_params(root, ctx), ctx)
    out += ["Command groups that installed plugins add (listed by `tracemark --help` where they are "
            "installed) are not part of this reference; `tracemark GROUP --help` describes them.", ""]
    for name, command in commands:
        out += _command_section(name, command, ctx)
    return "\n".join(out).rstrip("\n") + "\n"


def _anchor(name: str) -> str:
    """GitHub's anchor of the heading ``## `tracemark NAME` ``."""
    return f"{PROGRAM}-{name}".lower()


def check(path: Path = OUTPUT) -> bool:
    """Whether ``path`` holds exactly what :func:`render` gives now."""
    try:
        current = path.read_text(encoding="utf-8")
    except OSError:
        return False
    return current == render()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the tracemark CLI reference as Markdown (to standard output).")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 when {OUTPUT.relative_to(ROOT)} is not what the program gives now")
    args = ap.parse_args(argv)
    if args.check:
        if check():
            return 0
        print(f"{OUTPUT.relative_to(ROOT)} is stale: regenerate it with `{REGENERATE}`", file=sys.stderr)
        return 1
    text = render()
    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(encoding="utf-8")
    out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
