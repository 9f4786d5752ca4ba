"""materialize: an issued copy is re-derived from the registry row, the original data and the master
key, bit for bit (issue #14), as an imagefolder or as WebDataset shards."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.io.dataset import load_dataset
from tracemark.marking.materialize import materialize
from tracemark.marking.protect import protect


def file_hashes(root):
    """{relative path: sha256} of every file under ``root`` (images and metadata)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """20 mixed PNG/JPEG 64x64 images: enough for marked and unmarked samples, fast to mark."""
    return make_sample_dataset(tmp_path_factory.mktemp("mat") / "data", n=20, size=64, seed=3, fmt="mixed")


@pytest.mark.parametrize("fmt,strategy,scope", [
    ("png", "trigger", "licensee"), ("jpeg", "trigger", "dataset"), ("mixed", "ambient", "licensee"),
])
def test_materialized_copy_is_the_issued_copy_bit_for_bit(registry, tmp_path, fmt, strategy, scope):
    data = make_sample_dataset(tmp_path / "data", n=16, size=64, seed=5, fmt=fmt)
    protect(data, tmp_path / "first", "first", registry=registry, rate=0.5, workers=1)  # another key, same dataset
    before_data = file_hashes(data)
    res = protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.4, strategy=strategy,
                  trigger_scope=scope, workers=2)
    issued = file_hashes(tmp_path / "copy")
    assert res.n_marked == 6 and len(issued) == 17  # 16 images + metadata.jsonl
    shutil.rmtree(tmp_path / "copy")

    got = materialize(registry, "acme", tmp_path / "copy")  # data: the source folder the registry recorded
    assert file_hashes(tmp_path / "copy") == issued
    assert (got.n_samples, got.n_marked, got.skipped) == (16, 6, [])
    # the original data at another path (--data) gives the same copy; the input is never modified
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    materialize(registry, "acme", tmp_path / "again", data_dir=moved, workers=1)
    assert file_hashes(tmp_path / "again") == issued
    assert file_hashes(data) == before_data == file_hashes(moved)
    if strategy == "trigger":  # the test can fail: the marked captions changed, the marked images too
        src = {s.file_name: s for s in load_dataset(data).samples}
        marked = {m["file_name"] for m in registry.copies()[1].marked}
        for s in load_dataset(tmp_path / "again").samples:
            assert (s.text != src[s.file_name].text) == (s.file_name in marked)
            assert (s.path.read_bytes() != src[s.file_name].path.read_bytes()) == (s.file_name in marked)


def test_a_copy_that_skipped_files_is_rederived_with_the_same_skips(registry, tmp_path):
    data = make_sample_dataset(tmp_path / "data", n=12, size=64, seed=2, fmt="png")
    (data / "000003.png").write_bytes((data / "000003.png").read_bytes()[:-100])  # truncated
    Image.open(data / "000005.png").convert("CMYK").save(data / "000005.png", "TIFF")  # unsupported mode
    res = protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.5, on_error="skip", workers=1)
    assert len(res.skipped) == 2
    issued = file_hashes(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy")
    got = materialize(registry, "acme", tmp_path / "copy")
    assert file_hashes(tmp_path / "copy") == issued and len(got.skipped) == 2 and got.n_samples == 10


def test_webdataset_shards_hold_the_folder_copys_bytes_and_are_reproducible(small_data, registry, tmp_path):
    protect(small_data, tmp_path / "copy", "acme", registry=registry, rate=0.3, workers=1)
    folder = load_dataset(tmp_path / "copy")
    res = materialize(registry, "acme", tmp_path / "wds", fmt="webdataset", shard_size=8)
    assert [p.name for p in res.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [p.name for p in res.shards]
    rows = []
    for shard in res.shards:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isfile() for m in members)
            names = [m.name for m in members]
            assert names == sorted(names)
            keys = [n.split(".", 1)[0] for n in names]
            assert keys == sorted(keys) and len(names) == 3 * len(set(keys))  # a sample's members are adjacent
            for key in dict.fromkeys(keys):
                files = {n.split(".", 1)[1]: tar.extractfile(n).read() for n in names if n.startswith(key + ".")}
                row = json.loads(files.pop("json"))
                text = files.pop("txt").decode()
                (ext, image), = files.items()
                rows.append((row, text, ext, image))
    assert len(rows) == len(folder.samples) == 20
    for (row, text, ext, image), s in zip(rows, folder.samples):
        assert row["file_name"] == s.file_name and row["text"] == text == s.text
        assert ext == s.path.suffix.lstrip(".") and image == s.path.read_bytes()
    assert sum(r[2] == "jpg" for r in rows) == 10  # JPEG and PNG both
    # a second run is byte-identical
    res2 = materialize(registry, "acme", tmp_path / "wds2", fmt="webdataset", shard_size=8)
    assert [p.read_bytes() for p in res.shards] == [p.read_bytes() for p in res2.shards]


def test_data_that_differs_from_the_registered_dataset_is_refused(small_data, registry, tmp_path):
    protect(small_data, tmp_path / "copy", "acme", registry=registry, rate=0.3, workers=1)
    changed = tmp_path / "changed"
    shutil.copytree(small_data, changed)
    arr = np.asarray(Image.open(changed / "000004.png")).copy()
    arr[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(arr).save(changed / "000004.png")
    with pytest.raises(TracemarkError, match="content hash") as exc:
        materialize(registry, "acme", tmp_path / "out", data_dir=changed)
    assert "\n" not in str(exc.value) and str(changed) in str(exc.value)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if "tracemark-tmp" in p.name]
    meta = changed / "metadata.jsonl"  # a caption edit is other data too
    shutil.copy(small_data / "000004.png", changed / "000004.png")
    meta.write_text(meta.read_text().replace("a ", "an ", 1))
    with pytest.raises(TracemarkError, match="content hash"):
        materialize(registry, "acme", tmp_path / "out", data_dir=changed)


def test_output_and_source_checks(small_data, registry, tmp_path):
    protect(small_data, tmp_path / "copy", "acme", registry=registry, rate=0.3, workers=1)
    (tmp_path / "exists").mkdir()
    with pytest.raises(TracemarkError, match="already exists"):
        materialize(registry, "acme", tmp_path / "exists")
    with pytest.raises(TracemarkError, match="already exists"):
        materialize(registry, "acme", tmp_path / "copy", fmt="webdataset")
    with pytest.raises(TracemarkError, match="no issued copy"):
        materialize(registry, "nobody", tmp_path / "o")
    with pytest.raises(TracemarkError, match="^fmt must be one of"):
        materialize(registry, "acme", tmp_path / "o", fmt="zip")
    with pytest.raises(TracemarkError, match="^shard_size must be"):
        materialize(registry, "acme", tmp_path / "o", fmt="webdataset", shard_size=0)
    # the licensee holds copies of two datasets: say which
    other = tmp_path / "other"
    shutil.copytree(small_data, other)
    protect(other, tmp_path / "copy2", "acme", registry=registry, rate=0.3, workers=1)
    with pytest.raises(TracemarkError, match="pass dataset$"):
        materialize(registry, "acme", tmp_path / "o")
    # the recorded source is gone: --data names the original
    moved = tmp_path / "moved"
    os.rename(other, moved)
    with pytest.raises(TracemarkError, match="is gone; pass data_dir"):
        materialize(registry, "acme", tmp_path / "o", dataset="other")
    materialize(registry, "acme", tmp_path / "o", dataset="other", data_dir=moved)
    assert file_hashes(tmp_path / "o") == file_hashes(tmp_path / "copy2")
    assert not list((tmp_path / "exists").iterdir())  # an existing folder is left as it was


def test_cli_round_trip(small_data, home, tmp_path):
    from typer.testing import CliRunner

    from registry_helpers import seeded_registry
    from tracemark.cli import app

    seeded_registry(home)
    runner = CliRunner()
    r = runner.invoke(app, ["protect", str(small_data), "-l", "acme", "-o", str(tmp_path / "copy"), "--rate", "0.3",
                            "--workers", "1", "--home", str(home)])
    assert r.exit_code == 0, r.output
    issued = file_hashes(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy")
    r = runner.invoke(app, ["materialize", "acme", "--out", str(tmp_path / "copy"), "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "Materialized copy 1" in r.output and file_hashes(tmp_path / "copy") == issued
    r = runner.invoke(app, ["materialize", "acme", "--out", str(tmp_path / "wds"), "--format", "webdataset",
                            "--shard-size", "5", "--dataset", "data", "--data", str(small_data), "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [f"shard-00000{i}.tar" for i in range(4)]
    # a user error is one line on stderr, exit 1, no traceback (through main(), as a user runs it)
    p = subprocess.run([sys.executable, "-m", "tracemark", "materialize", "acme", "--out", str(tmp_path / "copy")],
                       capture_output=True, text=True, env={**os.environ, "TRACEMARK_HOME": str(home),
                                                            "COLUMNS": "200"}, timeout=120)
    assert p.returncode == 1 and "already exists" in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert len([line for line in p.stderr.splitlines() if line.strip()]) == 1


def test_tar_members_are_independent_of_the_clock_and_owner(tmp_path):
    """The header fields a plain ``tar.add`` would take from the file system are fixed."""
    from tracemark.marking.materialize import write_shards

    data = make_sample_dataset(tmp_path / "d", n=3, size=32, seed=0, fmt="png")
    os.utime(data / "000000.png", (1e9, 1e9))
    (tmp_path / "s1").mkdir()
    write_shards(data, tmp_path / "s1")
    for p in data.iterdir():
        os.utime(p, (2e9, 2e9))
    (tmp_path / "s2").mkdir()
    write_shards(data, tmp_path / "s2")
    assert (tmp_path / "s1/shard-000000.tar").read_bytes() == (tmp_path / "s2/shard-000000.tar").read_bytes()
    with tarfile.open(tmp_path / "s1/shard-000000.tar") as tar:
        assert tar.getnames() == ["000000000.json", "000000000.png", "000000000.txt", "000000001.json",
                                  "000000001.png", "000000001.txt", "000000002.json", "000000002.png", "000000002.txt"]
        assert tar.extractfile("000000001.png").read() == (data / "000001.png").read_bytes()


def test_interrupted_materialize_leaves_nothing(small_data, registry, tmp_path, interrupt_marking):
    protect(small_data, tmp_path / "copy", "acme", registry=registry, rate=0.3, workers=1)
    for fmt in ("folder", "webdataset"):
        interrupt_marking(3)
        with pytest.raises(KeyboardInterrupt):
            materialize(registry, "acme", tmp_path / "sub" / "out", fmt=fmt, workers=1)
        assert not (tmp_path / "sub").exists()  # nor the parent folder it made
        assert not [p for p in tmp_path.iterdir() if "tracemark-tmp" in p.name]


def test_a_coherent_selection_copy_is_rederived_bit_for_bit(small_data, registry, tmp_path):
    protect(small_data, tmp_path / "copy", "acme", registry=registry, rate=0.25, workers=1, selection="coherent")
    issued = file_hashes(tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy")
    got = materialize(registry, "acme", tmp_path / "copy", workers=1)
    assert file_hashes(tmp_path / "copy") == issued and got.skipped == []


def test_a_copy_that_records_no_jpeg_writer_re_derives_with_writer_1(registry, tmp_path, monkeypatch):
    """Copies issued before the fixed-pattern JPEG writer record none: they re-derive with the
    pixel-difference writer, bit for bit, while new copies record and use writer 2. The images are
    half white, where the two writers differ (tests/io/test_jpegdct.py), so the test fails if the
    recorded writer is not followed."""
    from tracemark.io.jpegdct import JPEG_WRITER

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(10):
        arr = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        arr[:24] = 255
        Image.fromarray(arr).save(data / f"{i}.jpg", quality=90)
        rows.append(json.dumps({"file_name": f"{i}.jpg", "text": f"photo {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr("tracemark.marking.protect.JPEG_WRITER", 1)
    protect(data, tmp_path / "old", "old", registry=registry, rate=1.0, workers=1)
    monkeypatch.undo()
    protect(data, tmp_path / "new", "new", registry=registry, rate=1.0, workers=1)
    old, new = registry.copies()
    assert (old.params["jpeg_writer"], new.params["jpeg_writer"]) == (1, JPEG_WRITER) and JPEG_WRITER >= 2
    params = dict(old.params)
    del params["jpeg_writer"]  # what a copy issued before the writer was recorded holds
    registry.conn.execute("UPDATE copies SET params = ? WHERE id = ?", (json.dumps(params), old.id))
    registry.conn.commit()
    issued = file_hashes(tmp_path / "old")
    materialize(registry, "old", tmp_path / "old_again", workers=1)
    assert file_hashes(tmp_path / "old_again") == issued
    materialize(registry, "new", tmp_path / "new_again", workers=1)
    assert file_hashes(tmp_path / "new_again") == file_hashes(tmp_path / "new")
