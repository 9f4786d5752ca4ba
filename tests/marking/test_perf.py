"""Issue #31: a further copy costs O(marked samples) after a one-time pass per dataset (validation,
digests and thumbnails kept in the registry, re-checked by size, mtime and inode), unmarked files by
the cheapest correct means (copy; hard links or reflinks on request), and marking that spends no
decode on what it already knows (a JPEG layout's splice verified once, PNG deflate settings found
without compressing rejected candidates twice)."""

import importlib
import os
import zlib

import numpy as np
import pytest

from tracemark.errors import TracemarkError
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.io import imaging
from tracemark.io.dataset import load_dataset
from tracemark.marking import selection
from tracemark.marking.materialize import materialize
from tracemark.marking.protect import protect

pm = importlib.import_module("tracemark.marking.protect")  # the package exports a function of that name


def file_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def marked_names(registry, licensee):
    return {m["file_name"] for c in registry.copies() if c.licensee == licensee for m in c.marked}


@pytest.fixture
def counted(monkeypatch):
    """Count full decodes (read_image), header opens (check_image_header) and thumbnail reads in
    this process (``workers=1`` keeps the jobs here)."""
    seen = {"decoded": [], "opened": [], "thumbs": []}
    real_read, real_head, real_fill = pm.read_image, pm.check_image_header, selection._fill_thumbnails

    def read(path, *a, **k):
        seen["decoded"].append(os.path.basename(path))
        return real_read(path, *a, **k)

    def head(path, *a, **k):
        seen["opened"].append(os.path.basename(path))
        return real_head(path, *a, **k)

    def fill(paths, out):
        seen["thumbs"] += [os.path.basename(p) for p in paths]
        return real_fill(paths, out)

    monkeypatch.setattr(pm, "read_image", read)
    monkeypatch.setattr(pm, "check_image_header", head)
    monkeypatch.setattr(selection, "_fill_thumbnails", fill)
    return seen


def test_a_further_copy_decodes_only_its_marked_samples(registry, tmp_path, counted):
    data = make_sample_dataset(tmp_path / "data", n=30, size=48, seed=2, fmt="mixed")
    protect(data, tmp_path / "a", "a", registry=registry, rate=0.1, min_marked=0, workers=1)  # the one-time pass
    assert len(counted["decoded"]) > 30 and len(counted["thumbs"]) == 30
    for v in counted.values():
        v.clear()
    selection._THUMBS.clear()  # as in a new process: nothing in memory, only the registry
    protect(data, tmp_path / "b", "b", registry=registry, rate=0.1, min_marked=0, workers=1)
    marked = {os.path.basename(n) for n in marked_names(registry, "b")}
    assert len(marked) == 3
    assert sorted(counted["decoded"]) == sorted(list(marked) * 2)  # the original and the written file
    assert counted["opened"] == [] and counted["thumbs"] == []
    # the copy is complete: every file, unmarked ones byte for byte
    src, out = file_bytes(data), file_bytes(tmp_path / "b")
    assert set(src) == set(out)
    assert all(src[k] == out[k] for k in src if os.path.basename(k) not in marked and k != "metadata.jsonl")
    # and materialize re-derives it bit for bit from the recorded pass
    selection._THUMBS.clear()
    materialize(registry, "b", tmp_path / "b2", workers=1)
    assert file_bytes(tmp_path / "b2") == out


def test_a_file_replaced_since_the_pass_is_checked_again_and_refused(registry, tmp_path):
    """Same size and same mtime but another file (a new inode): the record does not count, the file is
    decoded again and its corruption refused in one line."""
    data = make_sample_dataset(tmp_path / "data", n=20, size=48, seed=4, fmt="png")
    protect(data, tmp_path / "a", "a", registry=registry, rate=0.1, min_marked=0, workers=1)
    victim = sorted(data.glob("*.png"))[7]
    raw = victim.read_bytes()
    st = victim.stat()
    bad = tmp_path / "bad.png"
    bad.write_bytes(raw[: len(raw) // 2] + bytes(len(raw) - len(raw) // 2))
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(bad, victim)
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(TracemarkError) as exc:
        protect(data, tmp_path / "b", "b", registry=registry, rate=0.1, min_marked=0, workers=1)
    assert victim.name in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "b").exists()


def test_hard_links_share_the_originals_inode_only_on_request(registry, tmp_path):
    data = make_sample_dataset(tmp_path / "data", n=20, size=48, seed=6, fmt="mixed")
    res = protect(data, tmp_path / "a", "a", registry=registry, rate=0.1, min_marked=0, workers=1, link="hard")
    marked = marked_names(registry, "a")
    samples = load_dataset(data).samples
    for s in samples:
        same = os.path.samefile(s.path, tmp_path / "a" / s.file_name)
        assert same == (s.file_name not in marked), s.file_name
    assert res.placed == {"hard": len(samples) - len(marked)}
    # the default copies: no file of the copy is the original
    res_b = protect(data, tmp_path / "b", "b", registry=registry, rate=0.1, min_marked=0, workers=1)
    assert res_b.placed == {"copy": len(samples) - len(marked_names(registry, "b"))}
    assert not any(os.path.samefile(s.path, tmp_path / "b" / s.file_name) for s in samples)
    # a re-derived copy is the issued one whichever way its unmarked files were written
    materialize(registry, "a", tmp_path / "a2", workers=1)
    assert file_bytes(tmp_path / "a2") == file_bytes(tmp_path / "a")
    with pytest.raises(TracemarkError, match="^link must be one of"):
        protect(data, tmp_path / "c", "c", registry=registry, workers=1, link="symlink")


def test_reflink_falls_back_to_a_copy_where_the_filesystem_cannot_clone(tmp_path):
    src = tmp_path / "s.bin"
    src.write_bytes(b"abc" * 1000)
    how = pm.place_file(str(src), str(tmp_path / "d.bin"), "reflink")
    assert how in ("reflink", "copy") and (tmp_path / "d.bin").read_bytes() == src.read_bytes()
    assert not os.path.samefile(src, tmp_path / "d.bin")


def test_a_jpeg_layout_is_verified_once_and_splices_to_the_same_bytes(tmp_path, monkeypatch):
    from tracemark.marking.schemes import get_scheme

    data = make_sample_dataset(tmp_path / "data", n=6, size=64, seed=1, fmt="jpeg")
    files = sorted(data.glob("*.jpg"))
    params = {k: v for k, v in get_scheme("spread", strength=3.15).params().items() if k != "scheme"}
    calls = []
    real = imaging._decodes_alike
    monkeypatch.setattr(imaging, "_decodes_alike", lambda a, b: calls.append(1) or real(a, b))

    def run(out, cold):
        out.mkdir()
        for f in files:
            if cold:
                imaging._SPLICE_VERIFIED.clear()
            r = pm.mark_file(str(f), str(out / f.name), "spread", params, b"k" * 32, with_ssim=False)
            assert r["error"] is None
        return file_bytes(out)

    imaging._SPLICE_VERIFIED.clear()
    cold = run(tmp_path / "cold", True)
    n_cold = len(calls)
    imaging._SPLICE_VERIFIED.clear()
    warm = run(tmp_path / "warm", False)
    assert cold == warm
    assert n_cold == len(files) and len(calls) - n_cold == 1


def test_png_deflate_settings_reject_candidates_on_a_prefix_with_the_same_answer(monkeypatch):
    """The quick prefix only rejects: the answer is the one the full 256 KiB probe gives, and a
    source whose encoder is not the first candidate no longer compresses the probe per candidate."""
    rng = np.random.default_rng(0)
    raw = (rng.integers(0, 40, 400_000).cumsum() % 256).astype(np.uint8).tobytes()
    target = (9, 8, zlib.Z_DEFAULT_STRATEGY)  # plain zlib at level 9: third of its class
    c = zlib.compressobj(target[0], zlib.DEFLATED, 15, target[1], target[2])
    zsrc = c.compress(raw) + c.flush()
    compressed = []
    real = zlib.compressobj

    class Counting:
        def __init__(self, *a):
            self.c = real(*a)

        def compress(self, b):
            compressed.append(len(b))
            return self.c.compress(b)

        def flush(self):
            return self.c.flush()

    monkeypatch.setattr(imaging.zlib, "compressobj", Counting)
    assert imaging._png_deflate_settings(zsrc, raw) == target
    assert sum(compressed) <= (1 << 18) + 2 * (1 << 16)  # before: 3 x 256 KiB


def test_progress_counts_every_file_when_most_are_only_copied(registry, tmp_path):
    data = make_sample_dataset(tmp_path / "data", n=40, size=32, seed=8, fmt="png")
    protect(data, tmp_path / "a", "a", registry=registry, rate=0.05, min_marked=0, workers=1)
    calls = []
    protect(data, tmp_path / "b", "b", registry=registry, rate=0.05, min_marked=0, workers=1,
            progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (40, 40) and all(t == 40 for _, t in calls) and len(calls) >= 3
