import pytest

from tracemark.io.safe_write import atomic_dir


def test_atomic_dir_renames_on_success(tmp_path):
    out = tmp_path / "a" / "out"
    with atomic_dir(out) as tmp:
        (tmp / "x.txt").write_text("1")
        assert not out.exists()
    assert (out / "x.txt").read_text() == "1"
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary left behind


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "x.txt").write_text("1")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "x").write_text("")
    assert (tmp_path / "empty" / "x").exists()
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "empty"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
