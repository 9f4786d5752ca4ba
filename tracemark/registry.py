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
]


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

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self.db_path = self.home / "registry.sqlite"
        self.key_path = self.home / "master.key"
        if not self.db_path.exists():
            raise TracemarkError(f"{self.home}: no tracemark registry here; run `tracemark init` first")
        self.conn = self._connect()
        self.migrate()

    # --- setup ---------------------------------------------------------------------------
    @classmethod
    def init(cls, home: Path | None = None, owner: str = "owner") -> "Registry":
        home = Path(home) if home else default_home()
        if (home / "registry.sqlite").exists() or (home / "master.key").exists():
            raise TracemarkError(f"{home}: already initialised; refusing to overwrite the registry or master key")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        create_master_key(home / "master.key")
        conn = sqlite3.connect(home / "registry.sqlite")
        conn.close()
        os.chmod(home / "registry.sqlite", 0o600)
        reg = cls(home)
        with reg.write() as c:
            c.execute("INSERT INTO owner (id, name, created) VALUES (1, ?, ?)", (owner, now()))
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
        self.conn.execute("BEGIN IMMEDIATE")
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
        return load_master_key(self.key_path)

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
            "WHERE d.name = ? AND l.name = ?", (dataset, licensee)).fetchone())

    def add_copy(self, c: sqlite3.Connection, *, dataset_id: int, licensee_id: int, key_id: str, scheme: str,
                 strategy: str, rate: float, params: dict, marked: list[dict], out_path: str) -> int:
        try:
            cur = c.execute(
                "INSERT INTO copies (dataset_id, licensee_id, key_id, scheme, strategy, rate, params, marked, "
                "n_marked, out_path, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset_id, licensee_id, key_id, scheme, strategy, rate, json.dumps(params), json.dumps(marked),
                 len(marked), out_path, now()),
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
            "LEFT JOIN copies c ON c.licensee_id = l.id GROUP BY l.id ORDER BY l.id"
        ).fetchall()

    def copies(self, dataset: str | None = None) -> list[Copy]:
        sql = (
            "SELECT c.*, d.name AS dataset, l.name AS licensee FROM copies c "
            "JOIN datasets d ON d.id = c.dataset_id JOIN licensees l ON l.id = c.licensee_id"
        )
        args: tuple = ()
        if dataset is not None:
            if not self.conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone():
                raise TracemarkError(f"dataset '{dataset}' is not in the registry ({self.db_path})")
            sql += " WHERE d.name = ?"
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
