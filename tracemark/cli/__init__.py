"""The ``tracemark`` command line (typer + rich): ``app``, assembled in :mod:`tracemark.cli.app`,
and ``main``, the console script.

Exit status (``tracemark --help``, docs/audit.md; :mod:`tracemark.cli.errors`): 0 ran (nobody
named), 1 error (one line on stderr), 2 usage error, 3 a licensee was named, 130 interrupted. Every
verdict is one JSON document of schema ``tracemark.verdict/1`` (:mod:`tracemark.cli.verdict`).
"""

from tracemark.cli.app import app, main

__all__ = ["app", "main"]
