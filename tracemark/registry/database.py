"""The owner's registry: who got which copy of which dataset, and which audits were run.

SQLite (stdlib) in ``$TRACEMARK_HOME/registry.sqlite``: one file, transactional, safe under
concurrent CLI calls (WAL journal + busy timeout + ``BEGIN IMMEDIATE`` for writes). Schema
changes are numbered migrations applied in order and tracked with ``PRAGMA user_version``
(:mod:`tracemark.registry.schema`); a backup is restored by :mod:`tracemark.registry.restore`.

The registry holds no secrets: copies are identified by a public key id; the key itself is
re-derived from the master key (``$TRACEMARK_HOME/master.key``, mode 0600) when needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.registry.keys import Key, create_master_key, derive_key, load_master_key
from tracemark.registry.schema import MIGRATIONS, REQUIRED_TABLES, insert_samples, pack_ids, unpack_ids


def licensee_key_id(licensee: str, generation: int = 0) -> str:
    """The string a licensee's key is derived from: the name for the first copy, the name and the
    generation after a reissue (NUL cannot occur in a licensee name: no collision)."""
    return licensee if not generation else f"{licensee}\x00gen{int(generation)}"
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
    return Path(os.environ.get("TRACEMARK_HOME") or Path.home() / ".tracemark")


LOCK_WAIT_S = 30.0


def hold_lock(home: Path, exclusive: bool, wait_s: float = LOCK_WAIT_S):
    """Take the home's lock file (``HOME/.lock``): every command that opens the registry holds it
    shared for its whole run; ``restore`` holds it exclusive, so it never swaps the registry under
    a running ``protect`` (whose rows would land in the replaced file). Returns the open file (the
    lock lives as long as it does), or None where the home cannot hold a lock file (read-only: the
    registry itself then says why it cannot be used)."""
    try:
        fd = os.open(home / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        if exclusive:
            raise
        return None
    fh = os.fdopen(fd, "r+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.close()
                if exclusive:
                    raise TracemarkError(f"{home}: another tracemark command is using the registry (protect, "
                                         f"audit, ...); restore waits for it: try again when it has finished") \
                        from None
                raise TracemarkError(f"{home}: a `tracemark restore` is replacing the registry; try again when "
                                     "it has finished") from None
            time.sleep(0.1)


def registry_error(db: Path, exc: sqlite3.Error) -> TracemarkError:
    """Tell a registry SQLite cannot write (read-only home, disk full, a file size limit) from one
    that is damaged: only the second needs a restore."""
    msg = str(exc)
    home = db.parent
    cannot_write = any(t in msg for t in ("readonly", "read-only", "unable to open", "disk I/O error",
                                          "database or disk is full"))
    if isinstance(exc, sqlite3.OperationalError) and cannot_write:
        if not os.access(home, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
            return TracemarkError(f"{home}: cannot write here (read-only?): tracemark needs write access to its "
                                  f"home for the registry and its journal ({msg}); the registry was not changed")
        return TracemarkError(f"{db}: cannot write the registry ({msg}: disk full, a file size limit such as "
                              "`ulimit -f`, or a failing disk); this is no sign of damage: free space or lift "
                              "the limit and run the command again")
    return TracemarkError(f"{db}: the registry is damaged ({msg}); restore it from a backup with "
                          "`tracemark restore BACKUP`")


def check_private(path: Path, what: str) -> None:
    """Refuse a registry file others can read: it lists every licensee and their marked files."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TracemarkError(f"{path}: {what} is readable by others (mode {mode:o}); it lists every licensee's "
                             f"marked files: run chmod 600 {path}")


@dataclass
class SampleTable:
    """The samples of one dataset that any copy marked, as arrays (one load per query, not one
    decode per copy): ids sorted, file names, perceptual hashes, original captions."""

    ids: np.ndarray  # int64, sorted
    file_names: list[str]
    dhash: np.ndarray  # uint64
    text: list[str]

    def positions(self, sample_ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, sample_ids)
        if len(sample_ids) and (pos.max() >= len(self.ids) or (self.ids[pos] != sample_ids).any()):
            raise TracemarkError("registry: a copy refers to samples missing from the sample table (damaged registry?)")
        return pos

    def match(self, names: list[str], hashes: np.ndarray, max_distance: int,
              margins: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each image's best sample, one row per image that has one: (image index, sample id, dHash
        distance, matched by name). The sample the image is named after (full relative name, else base
        name) is its match only when their hashes agree within ``max_distance`` bits: a renamed or
        shuffled file is not trusted by its name alone. Otherwise the nearest sample in hash, if within
        ``max_distance``; ties go to the lowest id, so the answer does not depend on the table's order.
        ``margins`` (n_images x 64, how far each hash bit of the image is from flipping): "nearest"
        then weighs each disagreeing bit by its margin (the returned distance), since the mark, JPEG
        or resizing flip the bits of near-flat regions first and a disagreement there says little.

        Why the best and not every sample within reach: images of one domain sit a few bits apart,
        and counting a file for all its look-alikes dilutes each copy's mark with files it never
        marked. One vectorised pass over the table per image (a 10^6-sample table is 8 MB of hashes)."""
        empty = np.zeros(0, dtype=np.int64)
        by_name = {n: p for p, n in enumerate(self.file_names)}
        by_base: dict[str, list[int]] | None = None
        rows: list[tuple[int, int, float, bool]] = []
        for k in range(len(hashes) if len(self.ids) else 0):
            diff = self.dhash ^ np.uint64(hashes[k])
            near = np.flatnonzero(np.bitwise_count(diff) <= max_distance)  # ascending: ties to the lowest id
            if not len(near):
                continue
            if margins is None:
                rank = np.bitwise_count(diff[near]).astype(np.float64)
            else:  # rank by the margins of the disagreeing bits; reach by bit count
                bits = (diff[near, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
                rank = bits.astype(np.float64) @ np.asarray(margins[k], dtype=np.float64)
            name = names[k] if k < len(names) else ""
            if name:
                cands = [by_name[name]] if name in by_name else None
                if cands is None:
                    if by_base is None:  # built only when a leaked file was moved to another folder
                        by_base = {}
                        for p, n in enumerate(self.file_names):
                            by_base.setdefault(n.rsplit("/", 1)[-1], []).append(p)
                    cands = by_base.get(name.rsplit("/", 1)[-1], [])
                at = np.flatnonzero(np.isin(near, cands))  # named like a sample whose hash agrees
                if len(at):
                    j = int(at[np.argmin(rank[at])])
                    rows.append((k, int(self.ids[near[j]]), float(rank[j]), True))
                    continue
            j = int(np.argmin(rank))
            rows.append((k, int(self.ids[near[j]]), float(rank[j]), False))
        if not rows:
            return empty, empty, np.zeros(0), np.zeros(0, dtype=bool)
        img, sid, dist, named = zip(*rows)
        return (np.array(img, dtype=np.int64), np.array(sid, dtype=np.int64), np.array(dist, dtype=np.float64),
                np.array(named, dtype=bool))


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
    marked_ids: np.ndarray  # ids in the dataset's sample table
    n_marked: int
    out_path: str | None
    created: str
    samples: SampleTable | None = field(default=None, repr=False, compare=False)
    #: 0 for the first copy of (dataset, licensee); n after n reissues (each has its own key)
    generation: int = 0
    #: "issued", or "revoked" (kept: a leak of a revoked copy is still that licensee's)
    status: str = "issued"
    revoked: str | None = None

    @property
    def marked(self) -> list[dict]:
        """``[{"file_name", "dhash", "text"}]`` of the marked samples (built on demand)."""
        if self.samples is None:
            if len(self.marked_ids):
                raise TracemarkError("copy loaded without its sample table (Registry.copies(with_marked=False))")
            return []
        t = self.samples
        return [{"file_name": t.file_names[p], "dhash": int(t.dhash[p]), "text": t.text[p]}
                for p in t.positions(self.marked_ids)]


class Registry:
    """Open (and migrate) the registry of an initialised ``$TRACEMARK_HOME``."""

    def __init__(self, home: Path | None = None, *, _new: bool = False) -> None:
        self.home = Path(home) if home else default_home()
        self.db_path = self.home / "registry.sqlite"
        self.key_path = self.home / "master.key"
        self._master: bytes | None = None
        self._keys: dict[tuple[bytes, str, str, int], Key] = {}  # derived once per master key, then carried
        if not self.db_path.exists():
            if self.key_path.exists():
                raise TracemarkError(f"{self.db_path}: the registry is missing but the master key is here; put the "
                                     "registry back with `tracemark restore BACKUP` (init never overwrites a key)")
            raise TracemarkError(f"{self.home}: no tracemark registry here; run `tracemark init` first")
        self._lock = hold_lock(self.home, exclusive=False)
        try:
            if not _new:
                check_registry_file(self.db_path)
                check_private(self.db_path, "the registry")
            self.conn = self._connect()
            if not _new:
                self._check_schema(before_migration=True)
            self.migrate()
            if not _new:
                self._check_schema(before_migration=False)
                if self.conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("integrity check failed")
                self.recover_pending()
        except sqlite3.Error as exc:
            self.close()
            raise registry_error(self.db_path, exc) from None
        except BaseException:
            self.close()
            raise

    def _check_schema(self, before_migration: bool) -> None:
        """Refuse an SQLite file that is not a tracemark registry (no schema: it would be adopted and
        written to) or one that lost a table (every later query would be a traceback)."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if before_migration:
            if version == 0:
                what = f"tables {', '.join(sorted(tables))}" if tables else "no tables"
                raise TracemarkError(f"{self.db_path}: not a tracemark registry (an SQLite file with {what}); "
                                     "restore the registry with `tracemark restore BACKUP`")
            return
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise TracemarkError(f"{self.db_path}: the registry is damaged (table {', '.join(missing)} missing); "
                                 "restore it from a backup with `tracemark restore BACKUP`")
        if self.conn.execute("SELECT 1 FROM owner WHERE id = 1").fetchone() is None:
            raise TracemarkError(f"{self.db_path}: the registry is damaged (no owner record); restore it from a "
                                 "backup with `tracemark restore BACKUP`")

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
                step = MIGRATIONS[i]
                if callable(step):
                    step(c)
                else:
                    for stmt in step.split(";"):
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
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()
            self._lock = None

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

    def key_for(self, dataset: str, licensee: str, generation: int = 0) -> Key:
        """The key of (dataset, licensee, generation), derived once per master key: an audit asks for
        each copy's key several times (its trigger word, its pattern). The master key file is still
        read and checked on every call, so a key swapped under a running process is refused."""
        master = self.master()
        k = (master, dataset, licensee, int(generation))
        if k not in self._keys:
            self._keys[k] = derive_key(master, dataset, licensee_key_id(licensee, generation))
        return self._keys[k]

    def key_for_copy(self, copy: Copy) -> Key:
        key = self.key_for(copy.dataset, copy.licensee, copy.generation)
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
                    "pass dataset_name with a new name", params=("dataset_name",)
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

    def issued_copy_id(self, dataset: str, licensee: str) -> int | None:
        row = self.conn.execute(
            "SELECT c.id FROM copies c JOIN datasets d ON d.id = dataset_id JOIN licensees l ON l.id = licensee_id "
            "WHERE d.name = ? AND l.name = ? AND c.status = 'issued'", (dataset, licensee)).fetchone()
        return None if row is None else int(row[0])

    def has_copy(self, dataset: str, licensee: str) -> bool:
        return self.issued_copy_id(dataset, licensee) is not None

    def next_generation(self, dataset: str, licensee: str) -> int:
        """The generation a new copy of (dataset, licensee) gets: one past every recorded one."""
        row = self.conn.execute(
            "SELECT MAX(c.generation) FROM copies c JOIN datasets d ON d.id = dataset_id JOIN licensees l ON "
            "l.id = licensee_id WHERE d.name = ? AND l.name = ? AND c.status != 'pending'", (dataset, licensee)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def revoke(self, dataset: str, licensee: str, reason: str = "") -> int:
        """Mark the issued copy of (dataset, licensee) revoked: it stays in the registry and is still
        traced (a leak of it is still that licensee's), and the licensee may be issued a new one."""
        with self.write() as c:
            copy_id = self.issued_copy_id(dataset, licensee)  # read inside the write transaction
            if copy_id is None:
                raise TracemarkError(f"licensee '{licensee}' holds no issued copy of dataset '{dataset}' to revoke")
            c.execute("UPDATE copies SET status = 'revoked', revoked = ?, revoke_reason = ? WHERE id = ?",
                      (now(), reason, copy_id))
            return copy_id

    def pending_copy(self, dataset: str, licensee: str) -> sqlite3.Row | None:
        """The row of a copy whose issuing was interrupted (committed as pending, never finalised)."""
        return self.conn.execute(
            "SELECT c.id, c.out_path FROM copies c JOIN datasets d ON d.id = dataset_id JOIN licensees l ON "
            "l.id = licensee_id WHERE d.name = ? AND l.name = ? AND status = 'pending'", (dataset, licensee)).fetchone()

    def drop_pending(self, copy_id: int) -> None:
        with self.write() as c:
            c.execute("DELETE FROM copies WHERE id = ? AND status = 'pending'", (copy_id,))

    def finalize_copy(self, copy_id: int, replaces: int | None = None, reason: str = "reissued") -> None:
        """Issue a pending copy; ``replaces``: the copy it reissues, revoked in the same transaction."""
        with self.write() as c:
            if replaces is not None:
                c.execute("UPDATE copies SET status = 'revoked', revoked = ?, revoke_reason = ? WHERE id = ? AND "
                          "status = 'issued'", (now(), reason, replaces))
            try:
                c.execute("UPDATE copies SET status = 'issued' WHERE id = ?", (copy_id,))
            except sqlite3.IntegrityError:
                raise TracemarkError("another run issued this licensee a copy of this dataset meanwhile") from None

    def pending_copies(self) -> list[sqlite3.Row]:
        """Copies whose issuing was interrupted before their folder was written (listed by ``copies``)."""
        return self.conn.execute(
            "SELECT c.id, c.out_path, c.created, d.name AS dataset, l.name AS licensee FROM copies c JOIN datasets d "
            "ON d.id = c.dataset_id JOIN licensees l ON l.id = c.licensee_id WHERE c.status = 'pending' "
            "ORDER BY c.id").fetchall()

    def recover_pending(self) -> list[int]:
        """Issue the pending copies whose folder is complete on disk.

        ``protect`` commits a copy's row as pending, renames its finished folder into place (atomic),
        then marks the row issued. A run killed between the last two steps leaves a complete copy
        that no trace would test; its folder holding every marked file shows the rename happened,
        so the row is issued here. Rows of runs killed before the rename stay pending: the next
        ``protect`` of that licensee redoes them, and ``copies`` lists them."""
        rows = self.conn.execute("SELECT id, dataset_id, out_path, marked_ids FROM copies "
                                 "WHERE status = 'pending'").fetchall()
        done = []
        for r in rows:
            out = Path(r["out_path"] or "")
            if not r["out_path"] or not out.is_dir():
                continue
            table = self.sample_table(r["dataset_id"])
            try:
                names = [table.file_names[p] for p in table.positions(unpack_ids(r["marked_ids"]))]
            except TracemarkError:
                continue
            if names and all((out / n).is_file() for n in names):
                with self.write() as c:
                    # a reissue killed after its rename: the copy it replaces is revoked with it
                    c.execute("UPDATE copies SET status = 'revoked', revoked = ?, revoke_reason = 'reissued' WHERE "
                              "status = 'issued' AND dataset_id = ? AND licensee_id = (SELECT licensee_id FROM "
                              "copies WHERE id = ?)", (now(), r["dataset_id"], r["id"]))
                    c.execute("UPDATE copies SET status = 'issued' WHERE id = ? AND status = 'pending'", (r["id"],))
                done.append(int(r["id"]))
        return done

    def backup(self, dest: str | Path, *, force: bool = False, with_key: bool = False) -> Path:
        """A consistent copy of the registry (SQLite's online backup API), written atomically, 0600.
        ``dest`` may not lie in the home, be a symlink or a special file, or (without ``force``) exist.
        ``with_key``: the master key goes into the backup too (table ``backup_master_key``), so that one
        file restores everything; the file is then as secret as the key itself."""
        from tracemark.io.safe_write import check_output_file, replace_checked, unique_temp

        dest = Path(dest)
        check_output_file(dest, "the backup", force=force, home=self.home)
        tmp: Path | None = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = unique_temp(dest)
            master = self.master() if with_key else None  # a wrong key is refused before anything is written
            out = sqlite3.connect(tmp)
            try:
                self.conn.backup(out)
                if master is not None:
                    with out:
                        out.execute("CREATE TABLE backup_master_key (key_hex TEXT NOT NULL)")
                        out.execute("INSERT INTO backup_master_key VALUES (?)", (master.hex(),))
            finally:
                out.close()
            replace_checked(tmp, dest, force=force)
        except (OSError, sqlite3.Error) as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise TracemarkError(f"{dest}: cannot write the backup ({getattr(exc, 'strerror', None) or exc})") \
                from None
        return dest

    def status(self) -> dict:
        """What a user checks first: the home, the master key's public fingerprint (or why it cannot
        be read), the registry's integrity and schema, and what it holds. Reads only."""
        from tracemark.registry.keys import load_master_key

        try:
            key = f"ok, fingerprint {key_check_value(load_master_key(self.key_path))}"
            stored = self.conn.execute("SELECT key_check FROM owner WHERE id = 1").fetchone()[0]
            if stored is not None and key.split()[-1] != stored:
                key = f"WRONG: fingerprint {key.split()[-1]}, the registry expects {stored}"
        except TracemarkError as exc:
            key = f"unusable: {exc}"
        count = lambda sql: int(self.conn.execute(sql).fetchone()[0])  # noqa: E731
        owner = self.conn.execute("SELECT name, created FROM owner WHERE id = 1").fetchone()
        return {
            "home": str(self.home), "owner": owner["name"], "created": owner["created"], "master_key": key,
            "registry": str(self.db_path), "schema": self.conn.execute("PRAGMA user_version").fetchone()[0],
            "integrity": self.conn.execute("PRAGMA quick_check").fetchone()[0],
            "datasets": count("SELECT COUNT(*) FROM datasets"), "licensees": count("SELECT COUNT(*) FROM licensees"),
            "copies": count("SELECT COUNT(*) FROM copies WHERE status = 'issued'"),
            "pending": count("SELECT COUNT(*) FROM copies WHERE status = 'pending'"),
            "shadows": count("SELECT COUNT(*) FROM shadows WHERE status = 'ready'"),
            "audits": count("SELECT COUNT(*) FROM audits"),
        }

    def add_copy(self, c: sqlite3.Connection, *, dataset_id: int, licensee_id: int, key_id: str, scheme: str,
                 strategy: str, rate: float, params: dict, marked: list[dict], out_path: str,
                 status: str = "issued", generation: int = 0) -> int:
        ids = insert_samples(c, dataset_id, marked)
        try:
            cur = c.execute(
                "INSERT INTO copies (dataset_id, licensee_id, key_id, scheme, strategy, rate, params, marked, "
                "marked_ids, n_marked, out_path, created, status, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, '[]', ?, ?, ?, ?, ?, ?)",
                (dataset_id, licensee_id, key_id, scheme, strategy, rate, json.dumps(params), pack_ids(ids),
                 len(marked), out_path, now(), status, generation),
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

    def copies(self, dataset: str | None = None, with_marked: bool = True, include_revoked: bool = True) -> list[Copy]:
        """Issued copies (of one dataset), revoked ones included unless ``include_revoked=False``: a leak
        of a revoked copy is still that licensee's, so tracing tests it. ``with_marked=False`` skips
        loading the sample tables, for callers that need only keys and parameters."""
        sql = (
            "SELECT c.id, c.dataset_id, c.key_id, c.scheme, c.strategy, c.rate, c.params, c.marked_ids, c.n_marked, "
            "c.out_path, c.created, c.generation, c.status, c.revoked, d.name AS dataset, l.name AS licensee "
            "FROM copies c JOIN datasets d ON d.id = c.dataset_id JOIN licensees l ON l.id = c.licensee_id "
            + ("WHERE c.status IN ('issued', 'revoked')" if include_revoked else "WHERE c.status = 'issued'")
        )
        args: tuple = ()
        if dataset is not None:
            if not self.conn.execute("SELECT 1 FROM datasets WHERE name = ?", (dataset,)).fetchone():
                raise TracemarkError(f"dataset '{dataset}' is not in the registry ({self.db_path})")
            sql += " AND d.name = ?"
            args = (dataset,)
        rows = self.conn.execute(sql + " ORDER BY c.id", args).fetchall()
        tables = {ds: self.sample_table(ds) for ds in {r["dataset_id"] for r in rows}} if with_marked else {}
        return [
            Copy(r["id"], r["dataset"], r["licensee"], r["key_id"], r["scheme"], r["strategy"], r["rate"],
                 json.loads(r["params"]), unpack_ids(r["marked_ids"]), r["n_marked"], r["out_path"], r["created"],
                 tables.get(r["dataset_id"]), int(r["generation"]), r["status"], r["revoked"])
            for r in rows
        ]

    def sample_table(self, dataset_id: int) -> SampleTable:
        cur = self.conn.cursor()
        cur.row_factory = None  # plain tuples: sqlite3.Row costs ~5 us a row, 0.5 s at 10^5 samples
        rows = cur.execute("SELECT id, file_name, dhash, text FROM samples WHERE dataset_id = ? ORDER BY id",
                           (dataset_id,)).fetchall()
        ids, names, hashes, texts = (list(col) for col in zip(*rows)) if rows else ([], [], [], [])
        return SampleTable(np.array(ids, dtype=np.int64), names, np.array(hashes, dtype=np.int64).view(np.uint64),
                           texts)

    def file_digest(self, path: Path) -> str:
        """SHA-256 of a file, read once per (path, size, mtime): later calls use the recorded digest."""
        from tracemark.io.dataset import file_sha256

        path = Path(path).resolve()
        st = path.stat()
        row = self.conn.execute("SELECT sha256 FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                                (str(path), st.st_size, st.st_mtime_ns)).fetchone()
        if row:
            return row[0]
        digest = file_sha256(path)
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO file_digests (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                      (str(path), st.st_size, st.st_mtime_ns, digest))
        return digest

    def add_audit(self, kind: str, target: str, used: bool | None, p_value: float | None, result: dict) -> int:
        with self.write() as c:
            cur = c.execute(
                "INSERT INTO audits (created, kind, target, used, p_value, result) VALUES (?, ?, ?, ?, ?, ?)",
                (now(), kind, target, None if used is None else int(used), p_value, json.dumps(result)),
            )
            return int(cur.lastrowid)

    # --- shadows (the owner's reference fine-tunes, tracemark.audit.shadows) ----------------------
    def add_shadow(self, *, dataset: str, base_path: str, base_hash: str, preset: str, seed: int, path: str,
                   recipe: dict) -> int:
        """Record shadow ``seed`` of (dataset, base) as training, before its fine-tune starts (a rerun
        finds an interrupted one and resumes it); replaces an earlier record of that seed."""
        with self.write() as c:
            row = c.execute("SELECT id FROM datasets WHERE name = ?", (dataset,)).fetchone()
            if row is None:
                raise TracemarkError(f"dataset '{dataset}' is not in the registry ({self.db_path})")
            c.execute(
                "INSERT INTO shadows (dataset_id, base_path, base_hash, preset, seed, path, sha256, recipe, status, "
                "created) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 'training', ?) ON CONFLICT (dataset_id, base_hash, seed) "
                "DO UPDATE SET base_path = excluded.base_path, preset = excluded.preset, path = excluded.path, "
                "sha256 = NULL, recipe = excluded.recipe, status = 'training', created = excluded.created",
                (int(row["id"]), base_path, base_hash, preset, int(seed), path, json.dumps(recipe, sort_keys=True),
                 now()))
            return int(c.execute("SELECT id FROM shadows WHERE dataset_id = ? AND base_hash = ? AND seed = ?",
                                 (int(row["id"]), base_hash, int(seed))).fetchone()[0])

    def finish_shadow(self, shadow_id: int, sha256: str) -> None:
        """Mark a shadow ready once its weights file (of digest ``sha256``) is in place."""
        with self.write() as c:
            c.execute("UPDATE shadows SET status = 'ready', sha256 = ? WHERE id = ?", (sha256, shadow_id))

    def shadow_runs(self, dataset: str, base_hash: str | None = None) -> list[Shadow]:
        """Every shadow record of ``dataset`` (on ``base_hash``), training or ready, as recorded."""
        sql = ("SELECT s.*, d.name AS dataset FROM shadows s JOIN datasets d ON d.id = s.dataset_id "
               "WHERE d.name = ?")
        args: tuple = (dataset,)
        if base_hash is not None:
            sql += " AND s.base_hash = ?"
            args += (base_hash,)
        return [Shadow(r["id"], r["dataset"], r["base_path"], r["base_hash"], r["preset"], r["seed"], r["path"],
                       r["sha256"], json.loads(r["recipe"]), r["status"], r["created"])
                for r in self.conn.execute(sql + " ORDER BY s.base_hash, s.seed", args).fetchall()]

    def shadows(self, dataset: str, base_hash: str | None = None) -> list[Shadow]:
        """The usable shadows of ``dataset`` (fine-tuned from the base of fingerprint ``base_hash``,
        :func:`tracemark.audit.shadows.base_fingerprint`): ready, and their weights file still holds the
        recorded digest (a deleted or altered file is left out; ``tracemark shadow`` retrains it)."""
        out = []
        for s in self.shadow_runs(dataset, base_hash):
            if s.status != "ready" or not s.weights.is_file():
                continue
            try:
                if self.file_digest(s.weights) == s.sha256:
                    out.append(s)
            except OSError:
                continue
        return out


    # --- the dataset pass (tracemark.io.dataset.FileChecks) -----------------------------------
    def file_checks(self, paths: list[str]) -> dict[str, tuple]:
        """The recorded ``file_checks`` rows of ``paths``: {path: (size, mtime_ns, ino, version, pixels,
        sha256, thumb)}. A registry without the table (damaged) gives none: it is a cache."""
        out: dict[str, tuple] = {}
        try:
            for i in range(0, len(paths), 900):
                part = paths[i:i + 900]
                for r in self.conn.execute("SELECT path, size, mtime_ns, ino, version, pixels, sha256, thumb FROM "
                                           f"file_checks WHERE path IN ({','.join('?' * len(part))})", part):
                    out[r[0]] = tuple(r[1:])
        except sqlite3.OperationalError:
            return {}
        return out

    def record_file_checks(self, rows: list[tuple]) -> None:
        """Record (path, size, mtime_ns, ino, version, pixels, sha256, thumb) rows, replacing older ones."""
        if not rows:
            return
        try:
            with self.write() as c:
                c.executemany("INSERT OR REPLACE INTO file_checks (path, size, mtime_ns, ino, version, pixels, "
                              "sha256, thumb) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.OperationalError:
            pass  # a cache: the next run checks the files again
#: File name of a shadow's LoRA weights in its folder (diffusers' name, as the trainer writes it).
SHADOW_WEIGHTS = "pytorch_lora_weights.safetensors"


def find_copy(registry: Registry, licensee: str, dataset: str | None = None) -> Copy:
    """The one issued copy of ``licensee`` (of ``dataset`` when given), or a one-line error (revoked
    copies are not re-derived under the licensee's name: they are history)."""
    found = [c for c in registry.copies(dataset, include_revoked=False) if c.licensee == licensee]
    if not found:
        where = f" of dataset '{dataset}'" if dataset else ""
        raise TracemarkError(f"licensee '{licensee}' holds no issued copy{where} ({registry.db_path})")
    if len(found) > 1:
        names = ", ".join(sorted(c.dataset for c in found))
        raise TracemarkError(f"licensee '{licensee}' holds copies of several datasets ({names}); pass dataset",
                             params=("dataset",))
    return found[0]


@dataclass
class Shadow:
    """One shadow: a LoRA fine-tune of a base on the clean original dataset (a ``shadows`` row).
    ``path`` is its folder (what ``audit --reference-lora`` takes); ``recipe`` how it was trained."""

    id: int
    dataset: str
    base_path: str
    base_hash: str
    preset: str
    seed: int
    path: str
    sha256: str | None
    recipe: dict
    status: str  # 'training' | 'ready'
    created: str

    @property
    def weights(self) -> Path:
        return Path(self.path) / SHADOW_WEIGHTS
