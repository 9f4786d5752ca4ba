"""The owner's registry: who got which copy of which dataset, and which audits were run.

SQLite (stdlib) in ``$TRACEMARK_HOME/registry.sqlite``: one file, transactional, safe under
concurrent CLI calls (WAL journal + busy timeout + ``BEGIN IMMEDIATE`` for writes). Schema
changes are numbered migrations applied in order and tracked with ``PRAGMA user_version``.

The registry holds no secrets: copies are identified by a public key id; the key itself is
re-derived from the master key (``$TRACEMARK_HOME/master.key``, mode 0600) when needed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.keys import Key, create_master_key, derive_key, load_master_key

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE owner (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        content_hash TEXT NOT NULL,
        n_samples INTEGER NOT NULL,
        source_path TEXT,
        created TEXT NOT NULL
    );
    CREATE TABLE licensees (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE copies (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        licensee_id INTEGER NOT NULL REFERENCES licensees(id),
        key_id TEXT NOT NULL,
        scheme TEXT NOT NULL,
        strategy TEXT NOT NULL,
        rate REAL NOT NULL,
        params TEXT NOT NULL,
        marked TEXT NOT NULL,
        n_marked INTEGER NOT NULL,
        out_path TEXT,
        created TEXT NOT NULL,
        UNIQUE (dataset_id, licensee_id)
    );
    CREATE TABLE audits (
        id INTEGER PRIMARY KEY,
        created TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        used INTEGER,
        p_value REAL,
        result TEXT NOT NULL
    );
    """,
    # 2: a key check value (a wrong master.key is refused before it can register anything) and
    #    pending copies (a row is committed as pending before its folder is renamed into place)
    """
    ALTER TABLE owner ADD COLUMN key_check TEXT;
    ALTER TABLE copies ADD COLUMN status TEXT NOT NULL DEFAULT 'issued';
    """,
]

SQLITE_HEADER = b"SQLite format 3\x00"


def key_check_value(master: bytes) -> str:
    """A public fingerprint of the master key (HMAC of a fixed label; reveals nothing of the key)."""
    import hashlib
    import hmac

    return hmac.new(master, b"tracemark/key-check", hashlib.sha256).hexdigest()[:16]


def check_registry_file(path: Path) -> None:
    """One-line errors for a registry file that is empty, truncated or not SQLite at all."""
    size = path.stat().st_size
    if size == 0:
        raise TracemarkError(f"{path}: the registry file is empty (0 bytes; truncated?); every copy record would be "
                             "lost: restore it from a backup with `tracemark restore BACKUP`")
    with open(path, "rb") as fh:
        head = fh.read(100)
    if not head.startswith(SQLITE_HEADER):
        raise TracemarkError(f"{path}: not a tracemark registry (bad SQLite header); restore it from a backup "
                             "with `tracemark restore BACKUP`")
    page = int.from_bytes(head[16:18], "big") if len(head) >= 18 else 0
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big") if len(head) >= 32 else 0
    if len(head) < 100 or (page and pages and size < page * pages):
        raise TracemarkError(f"{path}: the registry file is truncated ({size} of {page * pages} bytes); restore it "
                             "from a backup with `tracemark restore BACKUP`")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_home() -> Path:
    return Path(os.environ.get("TRACEMARK_HOME", Path.home() / ".tracemark"))


@dataclass
class Copy:
    """One issued copy (a row of ``copies`` joined with its dataset and licensee names)."""

    id: int
    dataset: str
    licensee: str
    key_id: str
    scheme: str
    strategy: str
    rate: float
    params: dict
    marked: list[dict]  # [{"file_name": ..., "dhash": int, "text": original caption}]
    n_marked: int
    out_path: str | None
    created: str


class Registry:
    """Open (and migrate) the registry of an initialised ``$TRACEMARK_HOME``."""

    def __init__(self, home: Path | None = None, *, _new: bool = False) -> None:
        self.home = Path(home) if home else default_home()
        self.db_path = self.home / "registry.sqlite"
        self.key_path = self.home / "master.key"
        self._master: bytes | None = None
        if not self.db_path.exists():
            raise TracemarkError(f"{self.home}: no tracemark registry here; run `tracemark init` first")
        if not _new:
            check_registry_file(self.db_path)
        try:
            self.conn = self._connect()
            self.migrate()
            if not _new and self.conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
        except sqlite3.DatabaseError as exc:
            raise TracemarkError(f"{self.db_path}: the registry is damaged ({exc}); restore it from a backup "
                                 "with `tracemark restore BACKUP`") from None

    # --- setup ---------------------------------------------------------------------------
    @classmethod
    def init(cls, home: Path | None = None, owner: str = "owner") -> "Registry":
        home = Path(home) if home else default_home()
        if (home / "registry.sqlite").exists() or (home / "master.key").exists():
            raise TracemarkError(f"{home}: already initialised; refusing to overwrite the registry or master key")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        master = create_master_key(home / "master.key")
        fd = os.open(home / "registry.sqlite", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
        reg = cls(home, _new=True)
        with reg.write() as c:
            c.execute("INSERT INTO owner (id, name, created, key_check) VALUES (1, ?, ?, ?)",
                      (owner, now(), key_check_value(master)))
        return reg

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise TracemarkError(f"{self.db_path}: registry schema v{version} is newer than this tracemark")
        for i in range(version, len(MIGRATIONS)):
            with self.write() as c:
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {i + 1}")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: concurrent writers wait, never interleave)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TracemarkError(f"{self.db_path}: the registry is locked by another tracemark command for more "
                                     "than 30 s; try again when it has finished") from None
            raise TracemarkError(f"{self.db_path}: cannot write the registry ({exc})") from None
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    # --- keys ----------------------------------------------------------------------------
    def master(self) -> bytes:
        """The master key, checked against the registry's key check value (a registry written before
        it existed gets one from the first issued copy the key matches)."""
        master = load_master_key(self.key_path)
        if master == self._master:
            return master
        row = self.conn.execute("SELECT key_check FROM owner WHERE id = 1").fetchone()
        check = key_check_value(master)
        stored = row["key_check"] if row else None
        if stored is None:
            first = self.conn.execute(
                "SELECT c.key_id, d.name AS dataset, l.name AS licensee FROM copies c JOIN datasets d ON "
                "d.id = c.dataset_id JOIN licensees l ON l.id = c.licensee_id ORDER BY c.id LIMIT 1").fetchone()
            if first is not None and derive_key(master, first["dataset"], first["licensee"]).key_id != first["key_id"]:
                stored = "(copy 1's key)"
            elif row is not None:
                with self.write() as c:
                    c.execute("UPDATE owner SET key_check = ? WHERE id = 1", (check,))
                stored = check
        if stored is not None and stored != check:
            raise TracemarkError(f"{self.key_path}: wrong master key: not the one this registry was created with; "
                                 "put the right master.key back (nothing was written)")
        self._master = master
        return master

    def key_for(self, dataset: str, licensee: str) -> Key:
        return derive_key(self.master(), dataset, licensee)

    def key_for_copy(self, copy: Copy) -> Key:
        key = self.key_for(copy.dataset, copy.licensee)
        if key.key_id != copy.key_id:
            raise TracemarkError(
                f"{self.key_path}: master key does not match copy {copy.id} (key id {copy.key_id}); wrong master key?"
            )
        return key

    # --- datasets & licensees --------------------------------------------------------------
    def ensure_dataset(self, c: sqlite3.Connection, name: str, content_hash: str, n: int, source: str) -> int:
        row = c.execute("SELECT id, content_hash FROM datasets WHERE name = ?", (name,)).fetchone()
        if row:
            if row["content_hash"] != content_hash:
                raise TracemarkError(
                    f"{source}: dataset name '{name}' is already registered with different content; "
                    "pass --dataset with a new name"
                )
            return int(row["id"])
        cur = c.execute(
            "INSERT INTO datasets (name, content_hash, n_samples, source_path, created) VALUES (?, ?, ?, ?, ?)",
            (name, content_hash, n, source, now()),
        )
        return int(cur.lastrowid)

    def ensure_licensee(self, c: sqlite3.Connection, name: str) -> int:
        row = c.execute("SELECT id FROM licensees WHERE name = ?", (name,)).fetchone()
        if row:
            return int(row["id"])
        return int(c.execute("INSERT INTO licensees (name, created) VALUES (?, ?)", (name, now())).lastrowid)

    def has_copy(self, dataset: str, licensee: str) -> bool:
        return bool(self.conn.execute(
            "SELECT 1 FROM copies JOIN datasets d ON d.id = dataset_id JOIN licensees l ON l.id = licensee_id "
            "WHERE d.name = ? AND l.name = ? AND status = 'issued'", (dataset, licensee)).fetchone())

    def pending_copy(self, dataset: str, licensee: str) -> sqlite3.Row | None:
        """The row of a copy whose issuing was interrupted (committed as pending, never finalised)."""
        return self.conn.execute(
            "SELECT c.id, c.out_path FROM copies c JOIN datasets d ON d.id = dataset_id JOIN licensees l ON "
            "l.id = licensee_id WHERE d.name = ? AND l.name = ? AND status = 'pending'", (dataset, licensee)).fetchone()

    def drop_pending(self, copy_id: int) -> None:
        with self.write() as c:
            c.execute("DELETE FROM copies WHERE id = ? AND status = 'pending'", (copy_id,))

    def finalize_copy(self, copy_id: int) -> None:
        with self.write() as c:
            c.execute("UPDATE copies SET status = 'issued' WHERE id = ?", (copy_id,))

    def backup(self, dest: str | Path) -> Path:
        """A consistent copy of the registry (SQLite's online backup API), written atomically, 0600."""
        dest = Path(dest)
        if dest.is_dir():
            raise TracemarkError(f"{dest}: is a folder; name the backup file")
        if dest.resolve() == self.db_path.resolve():
            raise TracemarkError(f"{dest}: that is the registry itself")
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            os.close(fd)
            out = sqlite3.connect(tmp)
            try:
                self.conn.backup(out)
            finally:
                out.close()
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TracemarkError(f"{dest}: cannot write the backup ({exc.strerror or exc})") from None
        return dest

    def add_copy(self, c: sqlite3.Connection, *, dataset_id: int, licensee_id: int, key_id: str, scheme: str,
                 strategy: str, rate: float, params: dict, marked: list[dict], out_path: str,
                 status: str = "issued") -> int:
        try:
            cur = c.execute(
                "INSERT INTO copies (dataset_id, licensee_id, key_id, scheme, strategy, rate, params, marked, "
                "n_marked, out_path, created, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset_id, licensee_id, key_id, scheme, strategy, rate, json.dumps(params), json.dumps(marked),
                 len(marked), out_path, now(), status),
            )
        except sqlite3.IntegrityError as exc:
            raise TracemarkError("this licensee already holds a copy of this dataset") from exc
        return int(cur.lastrowid)

    # --- queries -------------------------------------------------------------------------
    def datasets(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM datasets ORDER BY id").fetchall()

    def licensees(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT l.id, l.name, l.created, COUNT(c.id) AS n_copies FROM licensees l "
            "LEFT JOIN copies c ON c.licensee_id = l.id AND c.status = 'issued' GROUP BY l.id ORDER BY l.id"
        ).fetchall()

    def copies(self, dataset: str | None = None, with_marked: bool = True) -> list[Copy]:
        """Issued copies (of one dataset). ``with_marked=False`` skips decoding the marked-sample
        lists (large at scale) for callers that need only keys and parameters."""
        cols = "c.*" if with_marked else ("c.id, c.key_id, c.scheme, c.strategy, c.rate, c.params, '[]' AS marked, "
                                          "c.n_marked, c.out_path, c.created")
        sql = (
            f"SELECT {cols}, d.name AS dataset, l.name AS licensee FROM copies c "
            "JOIN datasets d ON d.id = c.dataset_id JOIN licensees l ON l.id = c.licensee_id WHERE c.status = 'issued'"
        )
        args: tuple = ()
        if dataset is not None:
            if not self.conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone():
                raise TracemarkError(f"dataset '{dataset}' is not in the registry ({self.db_path})")
            sql += " AND d.name = ?"
            args = (dataset,)
        rows = self.conn.execute(sql + " ORDER BY c.id", args).fetchall()
        return [
            Copy(r["id"], r["dataset"], r["licensee"], r["key_id"], r["scheme"], r["strategy"], r["rate"],
                 json.loads(r["params"]), json.loads(r["marked"]), r["n_marked"], r["out_path"], r["created"])
            for r in rows
        ]

    def add_audit(self, kind: str, target: str, used: bool | None, p_value: float | None, result: dict) -> int:
        with self.write() as c:
            cur = c.execute(
                "INSERT INTO audits (created, kind, target, used, p_value, result) VALUES (?, ?, ?, ?, ?, ?)",
                (now(), kind, target, None if used is None else int(used), p_value, json.dumps(result)),
            )
            return int(cur.lastrowid)


def restore(home: str | Path | None, backup: str | Path) -> Path:
    """Put a backup (from :meth:`Registry.backup`) in place of a registry; the file it replaces, if
    any, is kept beside it as ``registry.sqlite.replaced-<time>``. The backup must be a sound
    registry made with this home's master key."""
    import shutil
    import time

    home = Path(home) if home else default_home()
    backup = Path(backup)
    if not backup.is_file():
        raise TracemarkError(f"{backup}: backup file not found")
    check_registry_file(backup)
    try:
        src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        ok = src.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        row = src.execute("SELECT key_check FROM owner WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise TracemarkError(f"{backup}: not a usable tracemark registry backup ({exc})") from None
    if not ok or row is None:
        src.close()
        raise TracemarkError(f"{backup}: not a usable tracemark registry backup (integrity check failed)")
    if row[0] is not None and (home / "master.key").exists() and \
            key_check_value(load_master_key(home / "master.key")) != row[0]:
        src.close()
        raise TracemarkError(f"{backup}: this backup was made with another master key than {home / 'master.key'}")
    db = home / "registry.sqlite"
    tmp = home / ".registry.sqlite.restore.part"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)
    out = sqlite3.connect(tmp)
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()
    if db.exists():
        shutil.move(db, db.with_name(f"registry.sqlite.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    os.replace(tmp, db)
    return db
