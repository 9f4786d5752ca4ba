"""Names a package exports but imports only when first used (PEP 562), so that importing the package,
or a light submodule of it, does not import what the heavy ones need (scipy, torch)."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(namespace: dict, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the module whose globals are ``namespace``: a name of
    ``table`` (name -> defining module) is imported on first use and then kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
