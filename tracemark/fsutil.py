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
