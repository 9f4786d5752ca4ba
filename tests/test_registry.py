import sqlite3
import stat
import subprocess
import sys

import pytest

from tracemark.errors import TracemarkError
from tracemark.registry import MIGRATIONS, Registry


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
    from tracemark.protect import protect

    reg = Registry.init(home)
    protect(sample_dir, tmp_path / "c", "acme", registry=reg, workers=1)
    reg.key_path.write_text("11" * 32 + "\n")
    with pytest.raises(TracemarkError, match="wrong master key"):
        reg.key_for_copy(reg.copies()[0])


def test_concurrent_writers_do_not_corrupt(home):
    Registry.init(home)
    code = (
        "import sys; from tracemark.registry import Registry\n"
        "r = Registry(sys.argv[1])\n"
        "for i in range(40):\n"
        "    with r.write() as c: r.ensure_licensee(c, f'{sys.argv[2]}-{i}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), f"w{j}"]) for j in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    reg = Registry(home)
    assert len(reg.licensees()) == 120
    assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
