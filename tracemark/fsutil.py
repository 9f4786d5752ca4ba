"""Atomic folder writes: a crash or Ctrl-C never leaves half a folder where a finished one belongs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``out``; when the block succeeds, rename it to ``out``.

    ``out`` may exist only as an empty folder (it is replaced). On any error, including
    KeyboardInterrupt, the temporary folder is removed and ``out`` is left untouched. The rename
    is atomic because the temporary folder is on the same filesystem.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # only an empty folder may be replaced
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_file(path: Path | None, what: str) -> None:
    """Fail early (before any work is recorded) for an output file that cannot be written: a folder,
    or a path whose nearest existing parent is not a writable folder."""
    from tracemark.errors import TracemarkError

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise TracemarkError(f"{path}: is a folder; {what} needs a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise TracemarkError(f"{path}: cannot write {what} here ({parent} is not a writable folder)")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write through ``path.part`` + rename; on failure remove the part file and raise a one-line error."""
    from tracemark.errors import TracemarkError

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TracemarkError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path
