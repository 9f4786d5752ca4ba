"""One exception type for every user-facing failure.

The CLI turns a :class:`TracemarkError` into a one-line message and a non-zero exit code, so
anything a user can cause (bad file, wrong key, bad option) must raise this, never a bare
exception that would print a traceback.
"""

from __future__ import annotations


class TracemarkError(Exception):
    """A problem the user can fix; the message names the file and the problem in one line."""
