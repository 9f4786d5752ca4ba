import os
import stat

import pytest

from tracemark.errors import TracemarkError
from tracemark.registry.keys import Key, create_master_key, decoy_keys, derive_key, load_master_key


def test_derivation_is_deterministic_and_separates_licensees_and_datasets():
    m = bytes(range(32))
    a = derive_key(m, "ds", "acme")
    assert a == derive_key(m, "ds", "acme")
    assert a != derive_key(m, "ds", "beta")
    assert a != derive_key(m, "ds2", "acme")
    # length-prefixing: ("ab", "c") and ("a", "bc") must differ
    assert derive_key(m, "ab", "c") != derive_key(m, "a", "bc")
    assert derive_key(bytes(32), "ds", "acme") != a


def test_key_repr_hides_secret_and_domains_are_independent():
    k = Key(bytes(32))
    assert bytes(32).hex() not in repr(k)
    assert k.seed("a") != k.seed("b")
    assert 0 <= k.uniform("select", "x") < 1


def test_master_key_file_is_private_and_not_overwritten(tmp_path):
    p = tmp_path / "master.key"
    secret = create_master_key(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_master_key(p) == secret
    with pytest.raises(TracemarkError, match="refusing to overwrite"):
        create_master_key(p)


def test_master_key_errors(tmp_path):
    with pytest.raises(TracemarkError, match="no master key"):
        load_master_key(tmp_path / "nope")
    p = tmp_path / "k"
    p.write_text("zz" * 32)
    os.chmod(p, 0o600)
    with pytest.raises(TracemarkError, match="hex"):
        load_master_key(p)
    p.write_text("00" * 32)
    os.chmod(p, 0o644)
    with pytest.raises(TracemarkError, match="readable by others"):
        load_master_key(p)


def test_decoys_are_reproducible_and_distinct():
    a, b = decoy_keys(5, seed=1), decoy_keys(5, seed=1)
    assert a == b and len({k.key_id for k in a}) == 5
    assert decoy_keys(1, seed=2)[0] != a[0]
