"""Watermark schemes, one module each, behind :class:`tracemark.schemes.base.Scheme`."""

from __future__ import annotations

from tracemark.errors import TracemarkError
from tracemark.schemes.base import Scheme
from tracemark.schemes.spectral import SpectralScheme
from tracemark.schemes.spread import SpreadScheme
from tracemark.schemes.tile import TileScheme
from tracemark.schemes.visible import VisibleScheme

SCHEMES: dict[str, type[Scheme]] = {"spread": SpreadScheme, "tile": TileScheme, "spectral": SpectralScheme, "visible": VisibleScheme}

try:  # optional until their modules land
    from tracemark.schemes.dwtdct import DwtDctScheme

    SCHEMES["dwtdct"] = DwtDctScheme
except ImportError:  # pragma: no cover
    pass
try:
    from tracemark.schemes.warp import WarpScheme

    SCHEMES["warp"] = WarpScheme
except ImportError:  # pragma: no cover
    pass

DEFAULT_SCHEME = "spread"


def get_scheme(name: str = DEFAULT_SCHEME, **params) -> Scheme:
    """Instantiate a scheme by name (``spread``, ``tile``, ``spectral``, ``dwtdct``, ``warp``, ``visible``)."""
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


__all__ = ["SCHEMES", "DEFAULT_SCHEME", "Scheme", "get_scheme", "parse_params"]
