"""The registry's SQLite schema: numbered migrations applied in order and tracked with
``PRAGMA user_version`` (:data:`MIGRATIONS`), the tables a sound registry holds, and the samples
table with the packed form of a copy's marked sample ids."""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Callable

import numpy as np


def pack_ids(ids) -> bytes:
    """Sorted sample ids -> zlib(delta-encoded uint32): ~1-2 bytes per marked sample."""
    a = np.unique(np.asarray(ids, dtype=np.int64))
    if len(a) and (a[0] < 0 or a[-1] >= 2**32):
        raise ValueError("sample ids must fit in uint32")
    return zlib.compress(np.diff(a, prepend=0).astype("<u4").tobytes(), 6)


def unpack_ids(blob: bytes | None) -> np.ndarray:
    if not blob:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(np.frombuffer(zlib.decompress(blob), dtype="<u4").astype(np.int64))


def _signed64(h: int) -> int:
    """A 64-bit perceptual hash as SQLite's signed INTEGER."""
    h = int(h)
    return h - (1 << 64) if h >= (1 << 63) else h


def _migrate_3(c: sqlite3.Connection) -> None:
    """Per-copy JSON lists of marked samples -> one sample table per dataset + packed id sets."""
    c.execute("""
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        file_name TEXT NOT NULL,
        dhash INTEGER NOT NULL,
        sha256 TEXT,
        text TEXT NOT NULL DEFAULT '',
        UNIQUE (dataset_id, file_name)
    )""")
    c.execute("ALTER TABLE copies ADD COLUMN marked_ids BLOB")
    for row in c.execute("SELECT id, dataset_id, marked FROM copies").fetchall():
        ids = insert_samples(c, row["dataset_id"], json.loads(row["marked"] or "[]"))
        c.execute("UPDATE copies SET marked_ids = ?, marked = '[]' WHERE id = ?", (pack_ids(ids), row["id"]))


def insert_samples(c: sqlite3.Connection, dataset_id: int, records: list[dict]) -> list[int]:
    """Ids of the dataset's samples ``records`` name (``file_name``, ``dhash``, ``text``, optional
    ``sha256``), adding the ones the table does not hold yet."""
    c.executemany(
        "INSERT OR IGNORE INTO samples (dataset_id, file_name, dhash, sha256, text) VALUES (?, ?, ?, ?, ?)",
        [(dataset_id, m["file_name"], _signed64(m.get("dhash", 0)), m.get("sha256"), m.get("text", ""))
         for m in records])
    names = [m["file_name"] for m in records]
    found: dict[str, int] = {}
    for i in range(0, len(names), 500):  # SQLite's bound-parameter limit
        chunk = names[i:i + 500]
        found.update((n, int(k)) for k, n in c.execute(
            f"SELECT id, file_name FROM samples WHERE dataset_id = ? AND file_name IN ({','.join('?' * len(chunk))})",
            (dataset_id, *chunk)))
    return [found[n] for n in names]


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
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
    # 3: a sample table per dataset; a copy's marked samples become a packed set of sample ids
    #    (O(1)-ish per copy instead of a JSON list of dicts decoded on every query)
    _migrate_3,
    # 4: digests of large files already hashed (model weights), keyed by path, size and mtime, so a
    #    second audit of a multi-GB checkpoint does not read it again
    """
    CREATE TABLE file_digests (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    """,
    # 5: the owner's shadows: LoRA fine-tunes of a public base on the clean original dataset, the
    #    white-box audit's reference (``tracemark shadow``); one per (dataset, base, seed)
    """
    CREATE TABLE shadows (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        base_path TEXT NOT NULL,
        base_hash TEXT NOT NULL,
        preset TEXT NOT NULL,
        seed INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT,
        recipe TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'training' CHECK (status IN ('training', 'ready')),
        created TEXT NOT NULL,
        UNIQUE (dataset_id, base_hash, seed)
    );
    """,
    # 6: revoke / reissue: a licensee may hold several generations of a copy of one dataset, each
    #    with its own key; at most one issued at a time; a revoked copy stays (history, and still traced)
    """
    CREATE TABLE copies_v6 (
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
        status TEXT NOT NULL DEFAULT 'issued',
        marked_ids BLOB,
        generation INTEGER NOT NULL DEFAULT 0,
        revoked TEXT,
        revoke_reason TEXT,
        UNIQUE (dataset_id, licensee_id, generation)
    );
    INSERT INTO copies_v6 (id, dataset_id, licensee_id, key_id, scheme, strategy, rate, params, marked, n_marked,
                           out_path, created, status, marked_ids)
        SELECT id, dataset_id, licensee_id, key_id, scheme, strategy, rate, params, marked, n_marked, out_path,
               created, status, marked_ids FROM copies;
    DROP TABLE copies;
    ALTER TABLE copies_v6 RENAME TO copies;
    CREATE UNIQUE INDEX copies_one_issued ON copies (dataset_id, licensee_id) WHERE status = 'issued';
    """,
    # 7: the one-time pass over a dataset's files (tracemark.io.dataset.FileChecks): per file, keyed by
    #    path, size, mtime and inode, whether it decoded fully (its pixel count), its SHA-256 and its
    #    thumbnail for the visual selection, so a further copy decodes only its marked samples
    """
    CREATE TABLE file_checks (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        version INTEGER NOT NULL,
        pixels INTEGER,
        sha256 TEXT,
        thumb BLOB
    );
    """,
]


#: Tables every registry of the current schema holds; a file missing one is damaged, not adopted.
REQUIRED_TABLES = ("owner", "datasets", "licensees", "copies", "audits", "samples", "file_digests", "shadows")
