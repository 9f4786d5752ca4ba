"""Exit status and error messages of every command, in one place.

Every failure a user can cause is a :class:`~tracemark.errors.TracemarkError`, printed here as one
line on stderr with exit status 1; an ``OSError`` (disk full, read-only folder) is one line naming
the file; Ctrl-C and SIGTERM unwind (every cleanup runs) and exit 130; typer's usage errors exit 2.
A verdict that names a licensee exits 3 (:func:`exit_for`). Nothing else is caught: a bug, or a
command module that fails to import, is a traceback.
"""

from __future__ import annotations

import re
import signal
import sys
from typing import Any

import typer

from tracemark.cli.output import err_console
from tracemark.errors import TracemarkError

#: Ran to the end (trace-files / audit: and named nobody).
EXIT_OK = 0
#: An error, said in one line on stderr.
EXIT_ERROR = 1
#: A usage error (typer's: unknown option, bad choice, missing argument).
EXIT_USAGE = 2
#: A verdict named a licensee (trace-files, audit). 3 rather than 1 (grep, clamscan) because 1 is
#: already every error here and 2 typer's usage error: a script can tell all four apart.
EXIT_NAMED = 3
#: Interrupted (Ctrl-C, SIGTERM); nothing half-written is left behind.
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = ("Exit status: 0 ran (trace-files / audit: nobody named); 3 a licensee was named; "
                   "1 error (one line on stderr); 2 usage error; 130 interrupted. Verdicts as JSON: --json FILE "
                   "or --json - (docs/audit.md).")


def exit_for(verdict: Any) -> None:
    """Exit :data:`EXIT_NAMED` when the verdict names a licensee (scripts tell named from not named)."""
    if verdict.used:
        raise typer.Exit(EXIT_NAMED)


#: The flag of each library argument whose flag is not ``--`` + its name with ``-`` for ``_``
#: (:func:`flag`): the commands pass these arguments under other names.
FLAGS = {
    "n_decoys": "--decoys",  # trace-files, audit
    "data_dir": "--data",  # materialize, reissue, trace-files, audit (protect's DATA_DIR is no option)
    "dataset_name": "--dataset",  # protect, shadow
    "scheme_params": "-p",  # protect
    "fmt": "--format",  # materialize
    "num_threads": "--threads",  # finetune
}


def flag(param: str) -> str:
    """The command-line flag of the library argument ``param``."""
    return FLAGS.get(param) or "--" + param.replace("_", "-")


def error_message(exc: BaseException) -> str:
    """The message of an error as a command says it: each argument named in ``exc.params``
    (:class:`~tracemark.errors.TracemarkError`) replaced by its flag (``min_marked`` -> ``--min-marked``)
    where it stands as a word of its own (not inside a path, a quoted value or ``key=value``)."""
    message, params = str(exc), sorted(getattr(exc, "params", ()), key=len, reverse=True)
    if not params:
        return message
    names = "|".join(re.escape(p) for p in params)  # one pass: a flag put in is never read again
    return re.sub(rf"(?<![\w\-./\\'\"=])(?:{names})(?![\w\-/\\'\"=]|\.\w)", lambda m: flag(m.group(0)), message)


def print_error(message: Any) -> None:
    if isinstance(message, BaseException):
        message = error_message(message)
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


_signalled: list[int] = []


def _on_signal(signum, frame) -> None:
    """Ctrl-C and SIGTERM unwind as KeyboardInterrupt, so every cleanup (temporary folders, pending
    registry rows, pool workers) runs; :func:`run` then says so in one line."""
    _signalled.append(signum)
    raise KeyboardInterrupt


def run(app: typer.Typer) -> None:
    """Run ``app`` as a program: the one place where errors become messages and exit status."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        app(standalone_mode=True)
    except TracemarkError as exc:
        print_error(exc)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _signalled.append(signal.SIGINT)
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer's answer to a KeyboardInterrupt inside a command
            _signalled.append(signal.SIGINT)
        if not _signalled:
            raise
    except OSError as exc:  # disk full, read-only folder, ...: one line naming the file
        where = exc.filename or ""
        print_error(f"{where}{': ' if where else ''}{exc.strerror or exc}")
        sys.exit(EXIT_ERROR)
    if _signalled:
        err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
        sys.exit(EXIT_INTERRUPTED)
