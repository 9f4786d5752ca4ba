import os
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.registry.database import Registry
from tracemark.registry.schema import MIGRATIONS


def test_init_creates_private_files_and_refuses_overwrite(home):
    reg = Registry.init(home)
    assert stat.S_IMODE(reg.key_path.stat().st_mode) == 0o600
    assert reg.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert reg.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(TracemarkError, match="already initialised"):
        Registry.init(home)


def test_uninitialised_home_is_a_clear_error(tmp_path):
    with pytest.raises(TracemarkError, match="tracemark init"):
        Registry(tmp_path / "nothing")


def test_newer_schema_is_refused(home):
    reg = Registry.init(home)
    reg.conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(TracemarkError, match="newer"):
        Registry(home)


def test_wrong_master_key_is_detected(home, sample_dir, tmp_path):
    from tracemark.marking.protect import protect

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "c", "acme", registry=reg, workers=1)
    reg.key_path.write_text("11" * 32 + "\n")
    with pytest.raises(TracemarkError, match="wrong master key"):
        reg.key_for_copy(reg.copies()[0])


def test_concurrent_writers_do_not_corrupt(home):
    Registry.init(home)
    code = (
        "import sys; from tracemark.registry.database import Registry\n"
        "r = Registry(sys.argv[1])\n"
        "for i in range(40):\n"
        "    with r.write() as c: r.ensure_licensee(c, f'{sys.argv[2]}-{i}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), f"w{j}"]) for j in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    reg = Registry(home)
    assert len(reg.licensees()) == 120
    assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_protect_refuses_a_wrong_master_key_and_registers_nothing(home, sample_dir, tmp_path):
    """Issue #15.1: a different master.key must not register a copy that later breaks tracing."""
    from tracemark.marking.protect import protect
    from tracemark.detection.tracing import trace_files

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "a", "a", registry=reg, rate=0.2, workers=1)
    good = reg.key_path.read_text()
    reg.key_path.write_text("11" * 32 + "\n")
    with pytest.raises(TracemarkError, match="wrong master key"):
        protect(sample_dir, tmp_path / "b", "b", registry=Registry(home), rate=0.2, workers=1)
    assert not (tmp_path / "b").exists() and len(Registry(home).copies()) == 1
    reg.key_path.write_text(good)
    assert trace_files(tmp_path / "a", Registry(home)).named == ["a"]


def test_a_registry_from_before_the_key_check_learns_it_from_its_first_copy(home, sample_dir, tmp_path):
    """Migration: an old registry (no key check) accepts its own key and refuses another one."""
    import sqlite3

    from tracemark.marking.protect import protect

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "a", "a", registry=reg, rate=0.2, workers=1)
    with sqlite3.connect(reg.db_path) as c:
        c.execute("UPDATE owner SET key_check = NULL")
    good = reg.key_path.read_text()
    reg.key_path.write_text("22" * 32 + "\n")
    with pytest.raises(TracemarkError, match="wrong master key"):
        Registry(home).master()
    reg.key_path.write_text(good)
    assert Registry(home).master() == bytes.fromhex(good.strip())


def test_copy_left_pending_by_a_crash_is_redone_on_the_next_run(home, sample_dir, tmp_path, monkeypatch):
    """Issue #15.2: a failure after the rename (e.g. the registry's disk fills) leaves no copy without a
    row; a crash between row and rename leaves a pending row that the next run drops and redoes."""
    from tracemark.marking.protect import protect

    reg = Registry.init(home)
    out = tmp_path / "sub" / "copy"

    def boom(self, copy_id):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Registry, "finalize_copy", boom)
    with pytest.raises(OSError):
        protect(sample_dir, out, "a", registry=reg, rate=0.2, workers=1)
    assert not out.exists() and not (tmp_path / "sub").exists(), "copy and the folders it created are rolled back"
    assert reg.copies() == [] and reg.pending_copy("data", "a") is None
    # a hard kill between rename and finalisation: simulate by leaving the row pending
    monkeypatch.setattr(Registry, "drop_pending", lambda self, cid: None)
    with pytest.raises(OSError):
        protect(sample_dir, out, "a", registry=reg, rate=0.2, workers=1)
    assert reg.pending_copy("data", "a") is not None and reg.copies() == []
    monkeypatch.undo()
    (out).mkdir(parents=True, exist_ok=True)  # the folder the pending row announced
    res = protect(sample_dir, out, "a", registry=Registry(home), rate=0.2, workers=1)
    assert res.n_marked == 10 and [c.licensee for c in Registry(home).copies()] == ["a"]


def test_stale_temporary_folders_of_dead_runs_are_removed(home, sample_dir, tmp_path):
    """Issue #15.11: a killed protect leaves .OUT.tracemark-tmp-PID-*; the next run removes it."""
    from tracemark.marking.protect import protect

    reg = Registry.init(home)
    dead = tmp_path / ".copy.tracemark-tmp-999999999-abcd1234"
    dead.mkdir()
    (dead / "x.png").write_bytes(b"half")
    live = tmp_path / f".copy.tracemark-tmp-{os.getpid()}-abcd1234"
    live.mkdir()
    protect(sample_dir, tmp_path / "copy", "a", registry=reg, rate=0.2, workers=1)
    assert not dead.exists() and live.exists()


@pytest.mark.parametrize("damage", ["empty", "half", "garbage"])
def test_damaged_registry_is_a_one_line_error_and_backup_restores_it(home, damage, tmp_path):
    """Issue #15.3: a truncated or garbage registry is never silently re-created."""
    reg = Registry.init(home)
    with reg.write() as c:
        reg.ensure_licensee(c, "acme")
    backup = reg.backup(tmp_path / "reg.bak")
    assert os.stat(backup).st_mode & 0o777 == 0o600
    reg.close()
    data = reg.db_path.read_bytes()
    if damage == "empty":
        reg.db_path.write_bytes(b"")
    elif damage == "half":
        with sqlite3.connect(reg.db_path) as c:  # make it multi-page first
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = reg.db_path.read_bytes()
        reg.db_path.write_bytes(data[: len(data) // 2])
    else:
        reg.db_path.write_bytes(b"\x00garbage" * 512)
    for f in home.glob("registry.sqlite-*"):
        f.unlink()
    with pytest.raises(TracemarkError, match="restore it from a backup|damaged"):
        Registry(home)
    from tracemark.registry.restore import restore

    restore(home, backup)
    assert [r["name"] for r in Registry(home).licensees()] == ["acme"]


def test_a_registry_locked_too_long_is_a_one_line_error(home):
    reg = Registry.init(home)
    holder = sqlite3.connect(reg.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = Registry(home)
    other.conn.execute("PRAGMA busy_timeout=100")
    try:
        with pytest.raises(TracemarkError, match="locked by another tracemark command"):
            with other.write() as c:
                other.ensure_licensee(c, "x")
    finally:
        holder.execute("ROLLBACK")


def test_two_runs_writing_the_same_out_folder(home, sample_dir, tmp_path, monkeypatch):
    """Issue #15 (Errno 39): the loser gets one line, keeps no row, leaves the winner's folder alone."""
    from tracemark.marking.protect import protect

    reg = Registry.init(home)
    out = tmp_path / "copy"
    real = Registry.add_copy

    def other_run_finishes_first(self, c, **kw):
        out.mkdir()
        (out / "theirs.txt").write_text("the other run's copy")
        return real(self, c, **kw)

    monkeypatch.setattr(Registry, "add_copy", other_run_finishes_first)
    with pytest.raises(TracemarkError, match="another run wrote this folder"):
        protect(sample_dir, out, "a", registry=reg, rate=0.2, workers=1)
    assert (out / "theirs.txt").exists() and reg.copies() == [] and reg.pending_copy("data", "a") is None
    assert not list(tmp_path.glob(".copy.tracemark-tmp-*"))


def test_registry_written_by_schema_v2_migrates_to_the_sample_table(tmp_path):
    """tests/data/registry_v2 was written by the main of session 6 (schema v2: a JSON list of
    marked samples per copy); it opens, migrates, and every copy keeps its marked samples."""
    import json
    import shutil
    import sqlite3
    from pathlib import Path

    src = Path(__file__).parent.parent / "data" / "registry_v2"
    home = tmp_path / "home"
    shutil.copytree(src, home)
    os.chmod(home / "master.key", 0o600)  # git checks files out 0644; a real home keeps its key private
    os.chmod(home / "registry.sqlite", 0o600)  # ... and its registry
    old = sqlite3.connect(home / "registry.sqlite")
    assert old.execute("PRAGMA user_version").fetchone()[0] == 2
    before = {i: json.loads(m) for i, m in old.execute("SELECT id, marked FROM copies")}
    old.close()
    reg = Registry(home)
    assert reg.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 3
    copies = reg.copies()
    assert [c.licensee for c in copies] == ["acme", "globex"]
    for c in copies:
        assert c.marked == before[c.id]  # names, perceptual hashes and captions, in order
        assert c.n_marked == len(before[c.id])
        assert reg.key_for_copy(c).key_id == c.key_id
    # shared samples are stored once
    names = {m["file_name"] for ms in before.values() for m in ms}
    assert reg.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == len(names)
    # leaked originals are matched to the copies that marked them, by name and by hash
    from tracemark.detection.scoring import _subsets_by_match

    acme = copies[0]
    leaked = [m["file_name"] for m in before[acme.id]] + ["unrelated.png"]
    hashes = np.array([m["dhash"] for m in before[acme.id]] + [0], dtype=np.uint64)
    assert _subsets_by_match(copies, leaked, hashes)[acme.id].tolist() == list(range(len(before[acme.id])))
    by_hash = _subsets_by_match(copies, ["renamed.png"] * len(hashes), hashes)
    assert by_hash[acme.id].tolist() == list(range(len(before[acme.id])))


def test_marked_sample_ids_pack_and_unpack():
    from tracemark.registry.schema import pack_ids, unpack_ids

    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**6, 20_000, replace=False))
    blob = pack_ids(ids)
    assert np.array_equal(unpack_ids(blob), ids)
    assert len(blob) < 3 * len(ids)  # delta + zlib: a 2% subset of 10^6 costs well under 3 bytes a sample
    assert unpack_ids(pack_ids([])).size == 0


# --- issue #27: nothing lost ------------------------------------------------------------------

def _copy_names(db):
    with sqlite3.connect(db) as c:
        return {r[0] for r in c.execute("SELECT l.name FROM copies c JOIN licensees l ON l.id = c.licensee_id")}


def test_restore_keeps_records_a_killed_reader_left_in_the_wal(home, sample_dir, tmp_path):
    """Issue #27.2: a reader held open (then killed -9) keeps SQLite from checkpointing: a copy issued
    meanwhile lives only in registry.sqlite-wal. Restoring an old backup must keep it in the replaced file."""
    import signal

    from tracemark.marking.protect import protect
    from tracemark.registry.restore import restore

    reg = Registry.init(home)
    old = reg.backup(tmp_path / "old.bak")
    reg.close()
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN'); c.execute('SELECT COUNT(*) FROM copies').fetchone()\n"
        "print('ready', flush=True); time.sleep(600)\n"), str(home / "registry.sqlite")],
        stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    reg = Registry(home)
    protect(sample_dir, tmp_path / "c", "late", registry=reg, rate=0.2, workers=1)
    reg.close()
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    assert (home / "registry.sqlite-wal").stat().st_size > 0
    res = restore(home, old)
    assert res.replaced is not None and "late" in _copy_names(res.replaced)
    assert res.not_in_backup == ["data/late"]


def test_restore_waits_for_a_running_command_and_concurrent_restores_do_not_collide(home, tmp_path):
    """Issue #27.3: restore takes the home's lock (a command in flight keeps it shared), and two
    restores get distinct replaced files and temporary files."""
    import threading

    from tracemark.registry.database import LOCK_WAIT_S, hold_lock
    from tracemark.registry.restore import restore

    reg = Registry.init(home)
    bak = reg.backup(tmp_path / "b.bak")
    with pytest.raises(TracemarkError, match="another tracemark command is using the registry"):
        hold_lock(home, exclusive=True, wait_s=0.2)  # what restore does while `reg` (a running command) is open
    reg.close()
    errors = []

    def one():
        try:
            restore(home, bak)
        except Exception as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=LOCK_WAIT_S)
    assert errors == []
    assert len(list(home.glob("registry.sqlite.replaced-*"))) == 3
    assert not list(home.glob("*.part"))
    Registry(home)


def test_sqlite_files_that_are_not_a_registry_are_refused(home):
    """Issue #27.7: an empty SQLite file, one with unrelated tables, or a registry missing `copies`
    is a one-line error, never adopted (schema added) nor a traceback later."""
    Registry.init(home).close()
    good = (home / "registry.sqlite").read_bytes()
    db = home / "registry.sqlite"
    for f in home.glob("registry.sqlite-*"):
        f.unlink()
    db.unlink()
    sqlite3.connect(db).execute("PRAGMA user_version = 0").connection.close()  # a valid, empty SQLite file
    os.chmod(db, 0o600)
    assert db.stat().st_size == 0 or db.read_bytes().startswith(b"SQLite")
    if db.stat().st_size == 0:  # sqlite writes nothing for an untouched database: give it one page
        with sqlite3.connect(db) as c:
            c.execute("CREATE TABLE t (x)")
            c.execute("DROP TABLE t")
    with pytest.raises(TracemarkError, match="not a tracemark registry"):
        Registry(home)
    db.unlink()
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    os.chmod(db, 0o600)
    with pytest.raises(TracemarkError, match="not a tracemark registry"):
        Registry(home)
    assert {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")} == {"photos"}
    db.write_bytes(good)
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE copies")
    with pytest.raises(TracemarkError, match="copies missing"):
        Registry(home)


def test_registry_readable_by_others_is_refused(home):
    """Issue #27.11: the registry lists every licensee's marked files; like the key, 0600 only."""
    Registry.init(home).close()
    os.chmod(home / "registry.sqlite", 0o644)
    with pytest.raises(TracemarkError, match="readable by others"):
        Registry(home)


def test_cannot_write_is_not_reported_as_damage_and_a_missing_registry_says_restore(home, tmp_path):
    """Issue #27.8: a file size limit (`ulimit -f`) makes writes fail: the message says so instead of
    'damaged, restore it'; a home with its key but no registry says restore, not init."""
    Registry.init(home).close()
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "from tracemark.errors import TracemarkError\nfrom tracemark.registry.database import Registry\n"
            "try:\n"
            "    r = Registry(sys.argv[1])\n"
            "    with r.write() as c:\n"
            "        for i in range(200): r.ensure_licensee(c, 'x' * 500 + str(i))\n"
            "except TracemarkError as e: print(e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "damaged" not in out and "cannot write" in out, out
    for f in home.glob("registry.sqlite*"):
        f.unlink()
    with pytest.raises(TracemarkError, match="tracemark restore"):
        Registry(home)


def test_a_copy_killed_after_its_rename_is_issued_not_left_untraceable(home, sample_dir, tmp_path, monkeypatch):
    """Issue #27.9: protect killed between the rename of its finished folder and the row's update
    left a complete copy that nothing traced; the registry now issues it when next opened."""
    from tracemark.marking.protect import protect
    from tracemark.detection.tracing import trace_files

    reg = Registry.init(home)
    monkeypatch.setattr(Registry, "finalize_copy", lambda self, cid: os.kill(os.getpid(), 0))  # "killed": no update
    protect(sample_dir, tmp_path / "c", "a", registry=reg, rate=0.2, workers=1)
    monkeypatch.undo()
    assert reg.conn.execute("SELECT status FROM copies").fetchone()[0] == "pending"
    reg.close()
    reg = Registry(home)
    assert [c.licensee for c in reg.copies()] == ["a"] and reg.pending_copies() == []
    assert trace_files(tmp_path / "c", reg, n_decoys=200).named == ["a"]


def test_backup_with_key_restores_a_fresh_home_in_one_file_and_status_reports(home, sample_dir, tmp_path):
    """Issue #30.3: `backup --with-key` carries the master key (0600), a restore into an empty home puts it
    back, so tracing works again; without it the key stays out of the backup. `status` says what is there."""
    from tracemark.marking.protect import protect
    from tracemark.registry.restore import restore

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "c", "acme", registry=reg, rate=0.2, workers=1)
    master = reg.key_path.read_text().strip()
    plain = reg.backup(tmp_path / "plain.bak")
    full = reg.backup(tmp_path / "full.bak", with_key=True)
    assert master.encode() not in plain.read_bytes() and master.encode() in full.read_bytes()
    assert stat.S_IMODE(full.stat().st_mode) == 0o600
    st = reg.status()
    assert st["copies"] == 1 and st["integrity"] == "ok" and st["master_key"].startswith("ok, fingerprint")
    assert master not in str(st)
    fresh = tmp_path / "fresh"
    res = restore(fresh, full)
    assert res.key_installed and stat.S_IMODE((fresh / "master.key").stat().st_mode) == 0o600
    assert (fresh / "master.key").read_text().strip() == master
    again = Registry(fresh)
    assert [c.licensee for c in again.copies()] == ["acme"] and again.key_for_copy(again.copies()[0])
    assert "backup_master_key" not in {r[0] for r in again.conn.execute("SELECT name FROM sqlite_master")}
    assert not restore(tmp_path / "fresh2", plain).key_installed and not (tmp_path / "fresh2" / "master.key").exists()


def test_revoke_and_reissue_keep_the_history_and_trace_both_generations(home, sample_dir, tmp_path):
    """Issue #30.4: a second copy for a licensee was refused with no way out. `reissue` issues a new copy
    with a new key (the next generation) and revokes the old one in one transaction; `revoke` alone keeps
    the row; both generations are still traced to the licensee; materialize re-derives the issued one."""
    from tracemark.marking.materialize import materialize
    from tracemark.marking.protect import protect, reissue
    from tracemark.detection.tracing import trace_files

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "g0", "acme", registry=reg, rate=0.2, workers=1)
    with pytest.raises(TracemarkError, match="tracemark reissue"):
        protect(sample_dir, tmp_path / "again", "acme", registry=reg, rate=0.2, workers=1)
    res = reissue(reg, "acme", tmp_path / "g1", workers=1)
    rows = reg.conn.execute("SELECT generation, status, revoke_reason FROM copies ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(0, "revoked", "reissued"), (1, "issued", None)]
    g0, g1 = reg.copies()
    assert g0.key_id != g1.key_id
    # The new key re-marks: the two generations' files differ. (Their marked *sets* may coincide: the
    # visual selection takes whole look-alike clusters, and 50 images at 20% give ~100 distinct sets,
    # so two keys drew the same one in about 2% of runs.)
    differ = [p.name for p in sorted((tmp_path / "g1").iterdir())
              if p.is_file() and (tmp_path / "g0" / p.name).exists()
              and p.read_bytes() != (tmp_path / "g0" / p.name).read_bytes()]
    assert len(differ) >= len(g1.marked_ids)
    assert reg.key_for_copy(g1).key_id == g1.key_id and res.copy_id == g1.id
    for folder in ("g0", "g1"):  # a leak of the revoked copy is still acme's
        assert trace_files(tmp_path / folder, reg, n_decoys=200).named == ["acme"]
    m = materialize(reg, "acme", tmp_path / "m1", workers=1)
    assert m.copy_id == g1.id
    reg.revoke("data", "acme", "licence ended")
    assert reg.issued_copy_id("data", "acme") is None and len(reg.copies()) == 2
    with pytest.raises(TracemarkError, match="no issued copy"):
        reg.revoke("data", "acme")
    protect(sample_dir, tmp_path / "g2", "acme", registry=reg, rate=0.2, workers=1)  # a new licence: generation 2
    assert reg.copies()[-1].generation == 2
