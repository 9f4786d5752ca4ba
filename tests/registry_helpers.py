"""Registry helpers shared by the tests (a module, not a fixture: tests call it with their own paths)."""

from __future__ import annotations

from tracemark.registry.database import Registry


def seeded_registry(home, seed: int = 0) -> Registry:
    """A registry whose master key is fixed by ``seed`` instead of drawn at random.

    Tests that assert a statistical property of *innocent* keys (no false accusation, calibrated
    null) on a handful of models must not depend on a fresh random master key: for a given set of
    images an innocent key's z is a fixed draw, so with random keys such a test fails by design in
    ~alpha of CI runs. Calibration over many key draws is measured by the experiments instead
    (docs/research/results.md), not by these regression tests.
    """
    reg = Registry.init(home)
    fix_master_key(home, seed)
    return reg


def fix_master_key(home, seed: int = 0) -> None:
    """Replace the master key of an initialised home (e.g. by `tracemark init`) with a fixed one."""
    import hashlib
    from pathlib import Path

    import sqlite3

    from tracemark.registry.database import key_check_value

    master = hashlib.sha256(f"tracemark-test-master|{seed}".encode()).hexdigest()
    Path(home, "master.key").write_text(master + "\n")
    with sqlite3.connect(Path(home, "registry.sqlite")) as conn:  # the registry's fingerprint of its key
        conn.execute("UPDATE owner SET key_check = ? WHERE id = 1", (key_check_value(bytes.fromhex(master)),))
