"""Watermark schemes, one module each, behind :class:`tracemark.marking.schemes.base.Scheme`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracemark.errors import TracemarkError
from tracemark.marking.schemes.base import Scheme
from tracemark.marking.schemes.color import ColorScheme
from tracemark.marking.schemes.spectral import SpectralScheme
from tracemark.marking.schemes.spread import SpreadScheme
from tracemark.marking.schemes.tile import TileScheme
from tracemark.marking.schemes.visible import VisibleScheme

if TYPE_CHECKING:
    from tracemark.registry.database import Copy

SCHEMES: dict[str, type[Scheme]] = {"spread": SpreadScheme, "tile": TileScheme, "spectral": SpectralScheme, "visible": VisibleScheme,
                                   "color": ColorScheme}

try:  # optional until their modules land
    from tracemark.marking.schemes.dwtdct import DwtDctScheme

    SCHEMES["dwtdct"] = DwtDctScheme
except ImportError:  # pragma: no cover
    pass
try:
    from tracemark.marking.schemes.warp import WarpScheme

    SCHEMES["warp"] = WarpScheme
except ImportError:  # pragma: no cover
    pass

DEFAULT_SCHEME = "spread"


def get_scheme(name: str = DEFAULT_SCHEME, **params) -> Scheme:
    """Instantiate a scheme by name (``spread``, ``tile``, ``spectral``, ``color``, ``dwtdct``, ``warp``, ``visible``)."""
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise TracemarkError(f"unknown scheme '{name}'; choose one of {', '.join(sorted(SCHEMES))}") from None
    try:
        return cls(**{k: v for k, v in params.items() if v is not None})
    except TracemarkError:
        raise
    except (TypeError, ValueError, IndexError) as e:  # an unknown parameter name, a value of the wrong type
        raise TracemarkError(f"scheme '{name}': bad parameter ({e})") from None


def parse_params(items: list[str] | None) -> dict:
    """``["cells=16", "band=[3,16]"]`` -> ``{"cells": 16, "band": [3, 16]}`` (JSON values, else strings)."""
    import json

    out: dict = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise TracemarkError(f"scheme parameter {item!r} is not KEY=VALUE")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


__all__ = ["SCHEMES", "DEFAULT_SCHEME", "Scheme", "get_scheme", "parse_params", "scheme_params"]


def scheme_params(copy: Copy) -> dict:
    """Constructor arguments of the copy's scheme, from the registry's params record."""
    return {k: v for k, v in copy.params.items() if k not in COPY_PARAMS}


#: Keys of a copy's params record that describe the copy, not its scheme's constructor.
COPY_PARAMS = ("scheme", "trigger_attempt", "trigger_scope", "selection", "selection_version", "min_marked",
               "caption_column", "image_column", "jpeg_writer")
