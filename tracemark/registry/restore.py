"""Put a backup (from :meth:`tracemark.registry.database.Registry.backup`) in place of a registry,
keeping the file it replaces and saying which copies the backup does not record."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.registry.database import check_registry_file, default_home, hold_lock, key_check_value
from tracemark.registry.keys import load_master_key


@dataclass
class Restored:
    """What :func:`restore` did: the live registry, the file it replaced (kept), and the copies
    that file recorded which the backup does not (``dataset/licensee``): records a restore of an
    older backup would otherwise drop without a word."""

    db: Path
    replaced: Path | None
    not_in_backup: list[str]
    #: the backup carried the master key (``backup --with-key``) and the home had none: it was written
    key_installed: bool = False


def _copy_keys(path: Path) -> set[tuple[str, str, str]]:
    try:
        conn = sqlite3.connect(path)
        try:
            return {tuple(r) for r in conn.execute(
                "SELECT d.name, l.name, c.key_id FROM copies c JOIN datasets d ON d.id = c.dataset_id "
                "JOIN licensees l ON l.id = c.licensee_id")}
        finally:
            conn.close()
    except sqlite3.Error:
        return set()


def restore(home: str | Path | None, backup: str | Path) -> Restored:
    """Put a backup (from :meth:`Registry.backup`) in place of a registry.

    Waits for every other tracemark command on this home to finish (the home's lock), folds the
    committed records still in the write-ahead log into the file it replaces, and keeps that file
    beside the registry as ``registry.sqlite.replaced-<time>`` (with its log, if the fold failed).
    The backup must be a sound registry made with this home's master key."""
    from tracemark.io.safe_write import unique_temp

    home = Path(home) if home else default_home()
    backup = Path(backup)
    if not backup.is_file():
        raise TracemarkError(f"{backup}: backup file not found")
    db = home / "registry.sqlite"
    if db.exists() and backup.resolve() == db.resolve():
        raise TracemarkError(f"{backup}: that is the live registry itself, not a backup")
    check_registry_file(backup)
    try:
        src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        ok = src.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = src.execute("SELECT key_check FROM owner WHERE id = 1").fetchone() if "owner" in tables else None
    except sqlite3.DatabaseError as exc:
        raise TracemarkError(f"{backup}: not a usable tracemark registry backup ({exc})") from None
    if not ok or row is None or "copies" not in tables:
        src.close()
        raise TracemarkError(f"{backup}: not a usable tracemark registry backup (integrity check failed or "
                             "tracemark's tables missing)")
    if row[0] is not None and (home / "master.key").exists() and \
            key_check_value(load_master_key(home / "master.key")) != row[0]:
        src.close()
        raise TracemarkError(f"{backup}: this backup was made with another master key than {home / 'master.key'}")
    key_hex = None
    if "backup_master_key" in tables:  # `backup --with-key`: the key travels with the registry
        got = src.execute("SELECT key_hex FROM backup_master_key").fetchone()
        try:
            key_hex = got[0] if got and len(bytes.fromhex(got[0])) == 32 else None
        except (TypeError, ValueError):
            key_hex = None
        if key_hex is None or (row[0] is not None and key_check_value(bytes.fromhex(key_hex)) != row[0]):
            src.close()
            raise TracemarkError(f"{backup}: the master key stored in this backup does not match its registry")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = hold_lock(home, exclusive=True)
    except OSError as exc:
        src.close()
        raise TracemarkError(f"{home}: cannot restore here ({exc.strerror or exc})") from None
    replaced: Path | None = None
    tmp: Path | None = None
    key_installed = False
    try:
        tmp = unique_temp(db, suffix=".restore.part")
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
        finally:
            out.close()
            src.close()
        if db.exists():
            try:  # committed rows a killed reader left only in the -wal: fold them into the file we keep
                conn = sqlite3.connect(db)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
            except sqlite3.Error:
                pass  # a damaged registry: its log moves with it below
            stamp = time.strftime("%Y%m%d-%H%M%S")
            replaced = db.with_name(f"registry.sqlite.replaced-{stamp}")
            n = 1
            while any(os.path.lexists(f"{replaced}{side}") for side in ("", "-wal")):
                n += 1
                replaced = db.with_name(f"registry.sqlite.replaced-{stamp}-{n}")
            os.replace(db, replaced)
            for side in ("-wal", "-journal"):
                if os.path.exists(f"{db}{side}") and os.path.getsize(f"{db}{side}"):
                    os.replace(f"{db}{side}", f"{replaced}{side}")
        for side in ("-wal", "-shm", "-journal"):
            Path(f"{db}{side}").unlink(missing_ok=True)
        if key_hex is not None:  # the key is not a table of the live registry: only master.key holds it
            with sqlite3.connect(tmp) as conn:
                conn.execute("DROP TABLE backup_master_key")
            conn.close()
            if not (home / "master.key").exists():
                fd = os.open(home / "master.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(key_hex + "\n")
                key_installed = True
        os.replace(tmp, db)
        tmp = None
    except OSError as exc:
        raise TracemarkError(f"{db}: cannot restore ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        lock.close()
    lost = sorted(_copy_keys(replaced) - _copy_keys(db)) if replaced is not None else []
    return Restored(db, replaced, [f"{d}/{lic}" for d, lic, _ in lost], key_installed)
