"""Safe writes: a crash or Ctrl-C never leaves half a file or folder where a finished one belongs,
and an output path never replaces what the owner cannot afford to lose (the master key, the
registry, a symlink's target, a device, an existing file written by someone else)."""

from __future__ import annotations

import os
import shutil
import stat
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


def tracemark_home() -> Path:
    """``$TRACEMARK_HOME`` or ``~/.tracemark`` (the registry and master key live there)."""
    return Path(os.environ.get("TRACEMARK_HOME") or Path.home() / ".tracemark")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _resolved(path: Path) -> Path:
    """The absolute path with every symlink of its existing part resolved (the file itself may not exist)."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop on the way
        return Path(os.path.abspath(path))


def _refuse_inside_home(path: Path, what: str, home: Path | None) -> None:
    """The master key and the registry are never an output: nothing is written inside the home
    (``$TRACEMARK_HOME`` and ``home``), whether named directly or through a symlink."""
    from tracemark.errors import TracemarkError

    homes = {tracemark_home()} | ({Path(home)} if home is not None else set())
    target = _resolved(path)
    for h in homes:
        if _inside(target, _resolved(h)) or _inside(Path(os.path.abspath(path)), Path(os.path.abspath(h))):
            raise TracemarkError(f"{path}: lies inside the tracemark home {h} (master key and registry); "
                                 f"write {what} elsewhere")


def check_output_file(path: Path | None, what: str, *, force: bool = False, home: Path | None = None) -> None:
    """Refuse an output file before any work is done or recorded.

    Refused: a path inside the tracemark home (``home``, default ``$TRACEMARK_HOME``: the master
    key and the registry are never an output), a symlink, anything that is not a regular file (a
    folder, a device, a fifo, a socket), an existing file unless ``force``, and a path whose
    nearest existing parent is not a writable folder.
    """
    from tracemark.errors import TracemarkError

    if path is None:
        return
    path = Path(path)
    _refuse_inside_home(path, what, home)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TracemarkError(f"{path}: cannot write {what} here ({exc.strerror or exc})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TracemarkError(f"{path}: is a symbolic link; {what} never replaces one (name a new file)")
        if stat.S_ISDIR(st.st_mode):
            raise TracemarkError(f"{path}: is a folder; {what} needs a file name")
        if not stat.S_ISREG(st.st_mode):
            raise TracemarkError(f"{path}: is not a regular file (a device, fifo or socket); {what} needs a "
                                 "new file name")
        if not force:
            raise TracemarkError(f"{path}: already exists; pass force to overwrite it, or name a new file",
                                 params=("force",))
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise TracemarkError(f"{path}: cannot write {what} here ({parent} is not a writable folder)")


def check_output_dir(path: Path | None, what: str, *, home: Path | None = None, new: bool = True) -> None:
    """Refuse an output folder inside the tracemark home, or (``new``) one that already exists as
    anything (a folder, a symlink, a file, a device): outputs are always new folders. With
    ``new=False`` the caller checks existence itself (protect resumes an interrupted copy)."""
    from tracemark.errors import TracemarkError

    if path is None:
        return
    path = Path(path)
    _refuse_inside_home(path, what, home)
    if os.path.islink(path):
        raise TracemarkError(f"{path}: is a symbolic link; {what} must be a new folder")
    if new and os.path.lexists(path):
        raise TracemarkError(f"{path}: already exists; {what} must be a new folder")


def unique_temp(path: Path, suffix: str = ".part") -> Path:
    """A new, empty, private (0600) file beside ``path``: concurrent writers never share a temp file."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def replace_checked(tmp: Path, path: Path, *, force: bool) -> None:
    """Rename a finished temporary file onto ``path``, checking again at the last moment that no
    symlink, special file or (without ``force``) file appeared there meanwhile."""
    from tracemark.errors import TracemarkError

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and (not stat.S_ISREG(st.st_mode) or not force):
        tmp.unlink(missing_ok=True)
        raise TracemarkError(f"{path}: appeared while it was being written; nothing was replaced")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str, *, force: bool = True, mode: int | None = None) -> Path:
    """Write through a unique hidden temp file + rename; on failure remove it and raise a one-line
    error. ``force=False`` refuses to replace an existing file; a symlink or special file is never
    replaced. The file is private (0600) unless ``mode`` says otherwise."""
    from tracemark.errors import TracemarkError

    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unique_temp(path)  # 0600: verdicts and reports name licensees
        if mode is not None:
            os.chmod(tmp, mode)
        tmp.write_text(text, encoding="utf-8")
        replace_checked(tmp, path, force=force)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise TracemarkError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path

