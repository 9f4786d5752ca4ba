"""One exception type for every user-facing failure.

The CLI turns a :class:`TracemarkError` into a one-line message and a non-zero exit code, so
anything a user can cause (bad file, wrong key, bad option) must raise this, never a bare
exception that would print a traceback.

A library message names the arguments of the function the caller called, as the caller wrote them
(``min_marked must be a whole number >= 0``), never a command-line flag; ``params`` lists the
argument names it mentions, so the CLI can name its flags instead (``--min-marked``:
:mod:`tracemark.cli.errors`).
"""

from __future__ import annotations


class TracemarkError(Exception):
    """A problem the user can fix; the message names the file and the problem in one line.

    ``params``: the names of the Python arguments the message talks about (each written in it as a
    plain word, e.g. ``TracemarkError("give base or reference, not both", params=("base", "reference"))``)."""

    def __init__(self, message: object = "", *, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)
