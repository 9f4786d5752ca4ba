"""What other installed distributions add to tracemark, found through entry points, never imported
by name.

Two entry-point groups (declared in a distribution's ``pyproject.toml``, read with
:mod:`importlib.metadata`):

- ``tracemark.default_base``: a base model folder (the object is a path, or a callable returning
  one): the default ``--base`` of ``tracemark finetune`` and ``tracemark shadow``
  (:func:`default_base`). The CPU test world (distribution ``tracemark-testworld``, the repository's
  ``testworld/`` folder, installed by ``make venv``) declares its tiny model here; without it, a base
  must be given.
- ``tracemark.cli_plugins``: a command group of ``tracemark``, named by the entry point (a typer app
  or a click command), listed in ``tracemark --help`` from its name and its distribution's summary
  and loaded only when used (:mod:`tracemark.cli.plugins`). The test world declares ``sim``.

Listing entry points reads installed metadata only; an entry point's module is imported when its
object is needed, and one that fails to import is its traceback.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from tracemark.errors import TracemarkError

#: Entry-point group of default base models.
DEFAULT_BASE_GROUP = "tracemark.default_base"
#: Entry-point group of command groups added to ``tracemark``.
CLI_GROUP = "tracemark.cli_plugins"


def plugins(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` over the installed distributions, sorted by name (one per name:
    the first found on ``sys.path``)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return [found[name] for name in sorted(found)]


def provider(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep`` (its value where that is unknown)."""
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.value


def summary(ep: EntryPoint) -> str:
    """The one-line summary of the distribution that declares ``ep`` ("" where it has none)."""
    dist = getattr(ep, "dist", None)
    return (dist.metadata.get("Summary") or "") if dist is not None else ""


def default_base() -> tuple[Path, str]:
    """The base model folder an installed distribution declares as the default, and that
    distribution's name. Raises :class:`TracemarkError` (one line) when no distribution declares one,
    when several do, or when the folder holds no ``model_index.json``."""
    eps = plugins(DEFAULT_BASE_GROUP)
    if not eps:
        raise TracemarkError("no base given and no default one is installed (the CPU test world, "
                             "tracemark-testworld, provides one): pass base, a model folder", params=("base",))
    if len(eps) > 1:
        raise TracemarkError("no base given and several default ones are installed ("
                             + ", ".join(f"{ep.name} from {provider(ep)}" for ep in eps)
                             + "): pass base, a model folder", params=("base",))
    ep = eps[0]
    obj = ep.load()
    path = Path(obj() if callable(obj) else obj)
    if not (path / "model_index.json").is_file():
        raise TracemarkError(f"{path}: the default model of {provider(ep)} has no model_index.json; "
                             "pass base, a model folder", params=("base",))
    return path, provider(ep)
