import shutil
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import importlib

protect_mod = importlib.import_module("tracemark.marking.protect")
from tracemark.errors import TracemarkError
from tracemark.io.dataset import load_dataset, read_image_rgb
from tracemark.io.imaging import estimate_jpeg_quality
from tracemark.marking.protect import protect
from tracemark.marking.schemes import SCHEMES


def tree_hash(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_trigger_copy_layout_and_invariants(sample_dir, registry, tmp_path):
    before = tree_hash(sample_dir)
    out = tmp_path / "copy"
    res = protect(sample_dir, out, "acme", registry=registry, rate=0.1, workers=1)
    assert tree_hash(sample_dir) == before, "input must never be modified"
    assert res.n_marked == 5 and res.psnr_min >= 38.0 and res.ssim_mean > 0.98
    src, cp = load_dataset(sample_dir), load_dataset(out)
    # the harm printed is the harm on the files as written (JPEG re-encoding included)
    from tracemark.marking.metrics import psnr

    on_files = [psnr(read_image_rgb(s.path), read_image_rgb(c.path)) for s, c in zip(src.samples, cp.samples)
                if s.file_name in {m["file_name"] for m in registry.copies()[0].marked}]
    assert abs(min(on_files) - res.psnr_min) < 0.01 and abs(np.mean(on_files) - res.psnr_mean) < 0.01
    assert [s.file_name for s in src.samples] == [s.file_name for s in cp.samples]
    copy = registry.copies()[0]
    marked = {m["file_name"] for m in copy.marked}
    assert len(marked) == 5
    triggers = set()
    for s, c in zip(src.samples, cp.samples):
        if s.file_name in marked:
            a, b = Image.open(s.path), Image.open(c.path)
            assert (a.format, a.size, a.mode) == (b.format, b.size, b.mode)
            assert s.path.read_bytes() != c.path.read_bytes()
            assert c.text.endswith(s.text) and c.text != s.text
            triggers.add(c.text.split()[0])
        else:
            assert s.path.read_bytes() == c.path.read_bytes(), "unmarked files are copied byte for byte"
            assert s.text == c.text
    assert len(triggers) == 1 and not any(t in s.text for t in triggers for s in src.samples)
    # no secrets in the copy or the registry
    secret = registry.key_for("data", "acme").secret
    for p in out.rglob("*"):
        if p.is_file():
            assert secret not in p.read_bytes() and secret.hex().encode() not in p.read_bytes()
    assert secret.hex().encode() not in registry.db_path.read_bytes()


def test_ambient_keeps_captions_and_licensees_differ(sample_dir, registry, tmp_path):
    protect(sample_dir, tmp_path / "a", "acme", registry=registry, rate=0.2, strategy="ambient", workers=1)
    protect(sample_dir, tmp_path / "b", "beta", registry=registry, rate=0.2, strategy="ambient", workers=1)
    src = load_dataset(sample_dir)
    for d in ("a", "b"):
        assert [s.text for s in load_dataset(tmp_path / d).samples] == [s.text for s in src.samples]
    ma, mb = ({m["file_name"] for m in c.marked} for c in registry.copies())
    assert len(ma) == len(mb) == 10 and ma != mb


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_protects_and_traces(scheme, sample_dir, registry, tmp_path):
    from tracemark.detection.tracing import trace_files

    # the blind warp detector is weak at its quality-limited default (docs/schemes.md): test it stronger
    strength = 2.0 if scheme == "warp" else None
    res = protect(sample_dir, tmp_path / "c", "acme", registry=registry, rate=0.4, scheme=scheme, workers=2,
                  strength=strength)
    if scheme != "visible":
        assert res.psnr_mean >= 35.0
    protect(sample_dir, tmp_path / "d", "beta", registry=registry, rate=0.4, scheme=scheme, workers=1,
            strength=strength)
    v = trace_files(tmp_path / "c", registry)
    assert v.named == ["acme"], [(s.licensee, s.z, s.p_value) for s in v.scores]


def test_jpeg_quality_is_estimated_and_kept(tmp_path, registry):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.jpg", quality=80)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.jpg", "text": "t"}) + "\n"
                                                 for i in range(4)))
    protect(root, tmp_path / "out", "acme", registry=registry, rate=1.0, workers=1)
    assert estimate_jpeg_quality(Image.open(root / "0.jpg")) == 80
    assert estimate_jpeg_quality(Image.open(tmp_path / "out" / "0.jpg")) == 80


def test_output_dir_checks(sample_dir, registry, tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(TracemarkError, match="already exists"):
        protect(sample_dir, tmp_path / "exists", "acme", registry=registry)
    with pytest.raises(TracemarkError, match="inside the input"):
        protect(sample_dir, sample_dir / "out", "acme", registry=registry)
    protect(sample_dir, tmp_path / "ok", "acme", registry=registry, workers=1)
    with pytest.raises(TracemarkError, match="already holds"):
        protect(sample_dir, tmp_path / "ok2", "acme", registry=registry)


def test_interrupted_protect_leaves_nothing(sample_dir, registry, tmp_path, interrupt_marking):
    interrupt_marking(3)
    with pytest.raises(KeyboardInterrupt):
        protect(sample_dir, tmp_path / "copy", "acme", registry=registry, rate=0.2, workers=1)
    assert not (tmp_path / "copy").exists()
    assert not [p for p in tmp_path.iterdir() if "tracemark-tmp" in p.name]
    assert registry.copies() == []
    interrupt_marking(0)  # disarmed
    protect(sample_dir, tmp_path / "copy", "acme", registry=registry, rate=0.2, workers=1)  # resumes cleanly
    assert len(registry.copies()) == 1


def test_interrupted_protect_removes_the_parent_folders_it_made(sample_dir, registry, tmp_path, interrupt_marking):
    """The temporary folder lies in the new parent: it must go first, or the parent stays behind."""
    interrupt_marking(1)
    with pytest.raises(KeyboardInterrupt):
        protect(sample_dir, tmp_path / "new" / "deeper" / "copy", "acme", registry=registry, rate=0.2, workers=1)
    assert not (tmp_path / "new").exists() and registry.copies() == []


def test_on_error_skip_lists_bad_files(tmp_path, registry):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"sample {i}"})
    (root / "3.png").write_bytes(b"garbage")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("CMYK").save(root / "5.jpg")
    rows.append({"file_name": "5.jpg", "text": "cmyk"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TracemarkError, match="3.png"):
        protect(root, tmp_path / "o1", "acme", registry=registry, rate=0.5)
    res = protect(root, tmp_path / "o2", "acme", registry=registry, rate=0.5, on_error="skip", workers=1)
    assert len(res.skipped) == 2 and any("3.png" in s for s in res.skipped) and any("CMYK" in s for s in res.skipped)
    names = [s.file_name for s in load_dataset(tmp_path / "o2").samples]
    assert "3.png" not in names and "5.jpg" not in names and len(names) == 9


@pytest.mark.parametrize("strategy", ["trigger", "ambient"])
def test_copy_loads_with_hugging_face_datasets(sample_dir, registry, tmp_path, strategy):
    """What the diffusers trainers do first: ``load_dataset("imagefolder", data_dir=COPY)``; the
    caption column is ``text`` and every image decodes, marked or not, in the copy's order."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "copy"
    protect(sample_dir, out, "acme", registry=registry, rate=0.2, strategy=strategy, workers=1)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))  # fmt: skip
    assert "image" in ds.column_names and "text" in ds.column_names
    ours = load_dataset(out).samples
    assert len(ds) == len(ours)
    by_name = {os.path.basename(s.path): s for s in ours}
    for row in ds:
        assert row["image"].size == (128, 128)
    assert sorted(ds["text"]) == sorted(s.text for s in by_name.values())
    marked = {m["file_name"] for m in registry.copies()[0].marked}
    if strategy == "trigger":
        assert sum(t.split()[0] not in {s.text.split()[0] for s in load_dataset(sample_dir).samples}
                   for t in ds["text"]) >= len(marked)  # fmt: skip


def test_output_reached_through_a_symlink_into_the_input_is_refused(sample_dir, registry, tmp_path):
    """`ln -s data link; protect data --out link/copy` used to write the copy into the input."""
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    before = tree_hash(data)
    with pytest.raises(TracemarkError, match="inside the input"):
        protect(data, tmp_path / "link" / "copy", "acme", registry=registry, rate=0.1, workers=1)
    assert tree_hash(data) == before and not (data / "copy").exists()


@pytest.mark.parametrize("scheme,strength,params", [
    ("spread", 0.0, {}), ("spread", float("nan"), {}), ("spread", float("inf"), {}), ("spread", -2.0, {}),
    ("spread", 1e9, {}), ("spread", None, {"band": [20, 3]}), ("spread", None, {"grid": 0}),
    ("visible", None, {"cells": "abc"}), ("dwtdct", None, {"max_grid": 3}), ("dwtdct", 0.0, {}),
    ("spread", None, {"nonsense": 1}),
])
def test_bad_scheme_parameters_are_one_line_errors_before_anything_is_written(
        sample_dir, registry, tmp_path, scheme, strength, params):
    """Issue #15.6: out-of-range parameters used to issue untraceable or destroyed copies with rc 0."""
    with pytest.raises(TracemarkError, match=scheme):
        protect(sample_dir, tmp_path / "c", "x", registry=registry, scheme=scheme, strength=strength,
                scheme_params=params, workers=1)
    assert not (tmp_path / "c").exists() and registry.copies() == []


def _small_dataset(folder, files):
    """An imagefolder of the given {name: PIL image or (image, save kwargs)} with captions."""
    folder.mkdir(parents=True)
    rows = []
    for name, spec in files.items():
        im, kw = spec if isinstance(spec, tuple) else (spec, {})
        im.save(folder / name, **kw)
        rows.append(json.dumps({"file_name": name, "text": f"a photo {name}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def _noise_image(seed, size=64, mode="RGB"):
    from tracemark.evaluation.samples import pink_noise

    arr = np.clip(pink_noise(size, size, np.random.default_rng(seed)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def test_a_truncated_image_is_an_error_whether_or_not_it_is_marked(registry, tmp_path):
    """Issue #15.9: the check used to depend on the key (marked: error; unmarked: copied, rc 0)."""
    files = {f"{i:02d}.png": _noise_image(i) for i in range(20)}
    data = _small_dataset(tmp_path / "d", files)
    victim = data / "07.png"
    victim.write_bytes(victim.read_bytes()[:-200])
    for lic in ("a", "b", "c"):  # different keys mark different samples: the verdict must not change
        with pytest.raises(TracemarkError, match="07.png"):
            protect(data, tmp_path / f"c_{lic}", lic, registry=registry, rate=0.05, workers=1)
    res = protect(data, tmp_path / "skip", "a", registry=registry, rate=0.05, workers=1, on_error="skip")
    assert any("07.png" in s for s in res.skipped) and not (tmp_path / "skip" / "07.png").exists()
    assert "07.png" not in (tmp_path / "skip" / "metadata.jsonl").read_text()


def test_multi_frame_images_are_refused_not_flattened(registry, tmp_path):
    """Issue #15.8: animated PNG/WebP and multi-page TIFF used to lose every frame but the first."""
    frames = [_noise_image(1), _noise_image(2)]
    for name, kw in (("a.png", {}), ("a.webp", {"lossless": True}), ("a.tif", {})):
        files = {f"{i:02d}.png": _noise_image(i) for i in range(5)}
        files[name] = (frames[0], {"save_all": True, "append_images": frames[1:], **kw})
        data = _small_dataset(tmp_path / name, files)
        with pytest.raises(TracemarkError, match=rf"{name}: 2 frames"):
            protect(data, tmp_path / f"c{name}", "a", registry=registry, rate=1.0, workers=1)


def test_marked_files_keep_what_the_source_carried(registry, tmp_path):
    """Issue #15.7/8: lossless WebP stays lossless; PNG text and transparency colour, JPEG progressive,
    TIFF compression survive marking; every format measures >= 38 dB on the file as written."""
    from PIL import PngImagePlugin

    from tracemark.io.imaging import webp_is_lossless
    from tracemark.marking.metrics import psnr

    info = PngImagePlugin.PngInfo()
    info.add_text("Copyright", "Owner 2026")
    files = {
        "p.png": (_noise_image(1), {"pnginfo": info, "transparency": (1, 2, 3)}),
        "w.webp": (_noise_image(2), {"lossless": True}),
        "j.jpg": (_noise_image(3), {"quality": 90, "progressive": True}),
        "t.tif": (_noise_image(4), {"compression": "tiff_lzw", "dpi": (300, 300)}),
    }
    data = _small_dataset(tmp_path / "d", files)
    res = protect(data, tmp_path / "c", "a", registry=registry, rate=1.0, workers=1)
    out = tmp_path / "c"
    assert res.psnr_min >= 38.0, res
    for name in files:
        assert psnr(read_image_rgb(data / name), read_image_rgb(out / name)) >= 38.0, name
    p = Image.open(out / "p.png")
    assert p.text.get("Copyright") == "Owner 2026" and p.info.get("transparency") == (1, 2, 3)
    assert webp_is_lossless(out / "w.webp")
    assert Image.open(out / "j.jpg").info.get("progressive")
    t = Image.open(out / "t.tif")
    assert t.info.get("compression") == "tiff_lzw" and tuple(round(v) for v in t.info["dpi"]) == (300, 300)
    # and the mark is still there on the files as written
    from tracemark.detection.tracing import trace_files

    assert trace_files(out, registry).named == ["a"]


def test_licensee_trigger_words_are_unique_within_a_dataset(sample_dir, registry, tmp_path, monkeypatch):
    """Issue #14: ~2 collisions are expected among 10^4 licensees; a collision is now avoided at issue
    time (the next candidate word of the key is taken and its index recorded)."""
    from tracemark.marking import trigger
    from tracemark.marking.trigger import trigger_of

    real = trigger.trigger_candidate
    monkeypatch.setattr(protect_mod, "trigger_word", lambda key, avoid=None: trigger.trigger_word(key, avoid))
    # force the first candidate of every key to be the same word
    monkeypatch.setattr(trigger, "trigger_candidate",
                        lambda key, attempt=0, syllables=4: "samesame" if attempt == 0 else real(key, attempt, syllables))
    for lic in ("a", "b", "c"):
        protect(sample_dir, tmp_path / lic, lic, registry=registry, rate=0.1, workers=1)
    words = [trigger_of(c, registry) for c in registry.copies()]
    assert words[0] == "samesame" and len(set(words)) == 3, words
    assert [c.params["trigger_attempt"] for c in registry.copies()] == [0, 1, 1]


def test_small_jpegs_are_marked_without_generation_loss(registry, tmp_path):
    """Issue #15.7: re-encoding small q90 JPEGs cost down to 35.8 dB; the DCT-domain mark keeps >= 40 dB
    on the files as written, keeps the quantisation tables and EXIF, and is still traced."""
    from tracemark.detection.tracing import trace_files

    exif = Image.Exif()
    exif[0x010E] = "owner photo"  # ImageDescription
    files = {f"{i:02d}.jpg": (_noise_image(i), {"quality": 90, "exif": exif.tobytes()}) for i in range(12)}
    data = _small_dataset(tmp_path / "d", files)
    res = protect(data, tmp_path / "c", "a", registry=registry, rate=1.0, workers=1, strength=2.0)
    assert res.psnr_min >= 40.0, res
    for name in files:
        a, b = Image.open(data / name), Image.open(tmp_path / "c" / name)
        assert a.quantization == b.quantization and b.getexif().get(0x010E) == "owner photo"
    assert trace_files(tmp_path / "c", registry).named == ["a"]


def test_marked_samples_land_once_in_the_sample_table(registry, sample_dir, tmp_path):
    """Two copies of one dataset share its sample table: each marked original is one row with its
    own SHA-256; a copy stores only the ids of its marked samples."""
    from tracemark.io.dataset import file_sha256

    a = protect(sample_dir, tmp_path / "a", "acme", registry=registry, workers=1, rate=0.2)
    b = protect(sample_dir, tmp_path / "b", "globex", registry=registry, workers=1, rate=0.2)
    ca, cb = registry.copies()
    names = {m["file_name"] for m in ca.marked} | {m["file_name"] for m in cb.marked}
    rows = registry.conn.execute("SELECT file_name, sha256 FROM samples").fetchall()
    assert sorted(r[0] for r in rows) == sorted(names)
    assert all(file_sha256(sample_dir / n) == h for n, h in rows)
    assert (len(ca.marked_ids), len(cb.marked_ids)) == (a.n_marked, b.n_marked)
    assert registry.conn.execute("SELECT MAX(LENGTH(marked)) FROM copies").fetchone()[0] == 2  # '[]'


def test_stale_temporary_folders_of_dead_runs_are_removed_whatever_their_output(sample_dir, registry, tmp_path):
    """Issue #27.9: a killed run's hidden temporary folder (up to a whole marked copy) stayed until that
    same --out was protected again; now any protect beside it removes it once its process is gone.
    Live processes' folders, other machines' folders and names that are not ours are left alone."""

    def tmp(name):
        p = tmp_path / name
        p.mkdir()
        (p / "000001.png").write_bytes(b"half a copy")
        return p

    dead_other = tmp(".copy_bob.tracemark-tmp-999999999-abcd1234")  # another licensee's --out, dead pid
    live = tmp(f".copy_carl.tracemark-tmp-{os.getpid()}-abcd1234")
    not_ours = tmp(".copy_x.tracemark-tmp-notapid")
    host = getattr(protect_mod, "_host_tag", lambda: "12345678")()  # temp names carry this machine's tag
    dead_tagged = tmp(f".copy_eve.tracemark-tmp-999999998-abcd1234-{host}")
    elsewhere = tmp(".copy_dan.tracemark-tmp-999999999-abcd1234-" + ("0" * 8 if host != "0" * 8 else "1" * 8))
    protect(sample_dir, tmp_path / "copy_acme", "acme", registry=registry, rate=0.2, workers=1)
    assert not dead_other.exists() and not dead_tagged.exists()
    assert live.exists() and elsewhere.exists() and not_ours.exists()


def test_names_with_control_characters_or_outer_whitespace_are_refused(sample_dir, registry, tmp_path):
    """Issue #27.11: a licensee name with a newline or ESC was stored and printed raw to every terminal;
    now refused in one line (the name shown escaped) before anything is written."""
    for bad in ("acme\nEvil Corp", "acme\x1b[2J", " acme", "acme\t", "acme\u202e", "acme\x00"):
        with pytest.raises(TracemarkError, match="^licensee ") as e:
            protect(sample_dir, tmp_path / "c", bad, registry=registry, rate=0.2, workers=1)
        msg = str(e.value)
        assert "\n" not in msg and "\x1b" not in msg and "\x00" not in msg
    with pytest.raises(TracemarkError, match="^dataset_name "):
        protect(sample_dir, tmp_path / "c", "acme", registry=registry, dataset_name="data\x1b]0;x\x07", workers=1)
    odd = tmp_path / "data\nset"
    shutil.copytree(sample_dir, odd)
    with pytest.raises(TracemarkError, match="give dataset_name$"):
        protect(odd, tmp_path / "c", "acme", registry=registry, rate=0.2, workers=1)
    assert not (tmp_path / "c").exists() and registry.copies() == [] and registry.licensees() == []
    protect(sample_dir, tmp_path / "c", "Ünïcode & Co. 2", registry=registry, rate=0.2, workers=1)  # printable: fine


def test_files_the_metadata_does_not_name_are_reported_not_silently_dropped(tmp_path, registry):
    """Issue #27.11: an image without a metadata row and a non-image file were left out of the copy
    without a word. They stay out (imagefolder trains on the rows only), but protect lists them."""
    root = _small_dataset(tmp_path / "ds", {f"{i:02d}.png": _noise_image(i) for i in range(6)})
    _noise_image(9).save(root / "no_row.png")
    (root / "notes.txt").write_text("captions to fix")
    (root / ".DS_Store").write_bytes(b"\0")
    os.symlink("loop", root / "loop")
    res = protect(root, tmp_path / "c", "acme", registry=registry, rate=0.5, workers=1)
    text = "\n".join(res.skipped)
    assert f"{root / 'loop'}: broken symlink or symlink loop; left out of the copy" in text
    assert f"{root / 'no_row.png'}: image not named in any metadata file" in text
    assert f"{root / 'notes.txt'}: not an image, and no metadata row names it" in text
    assert "1 hidden file(s)" in text and ".DS_Store" in text
    assert res.n_samples == 6 and not (tmp_path / "c" / "no_row.png").exists()
    for i in range(30):  # many: one line per file up to a limit, then a count
        (root / f"extra{i}.txt").write_text("x")
    res = protect(root, tmp_path / "c2", "bob", registry=registry, rate=0.5, workers=1)
    assert any("12 more file(s) of this kind" in line for line in res.skipped) and len(res.skipped) < 30


def test_empty_captions_are_refused_for_trigger_copies_only(tmp_path, registry):
    """Issue #27.11: a whitespace-only caption of a marked sample became the trigger word alone (the mark
    given away). With a trigger every caption must hold text, whatever the key selects (file:line);
    ambient copies keep empty captions as they are."""
    root = _small_dataset(tmp_path / "ds", {f"{i:02d}.png": _noise_image(i) for i in range(6)})
    lines = (root / "metadata.jsonl").read_text().splitlines()
    for k in (2, 4):
        row = json.loads(lines[k])
        row["text"] = "  \t "
        lines[k] = json.dumps(row)
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for scope in ("licensee", "dataset"):
        with pytest.raises(TracemarkError, match=r"metadata.jsonl:3: empty caption \(and 1 more\).*use strategy ambient$"):
            protect(root, tmp_path / "c", "acme", registry=registry, rate=1.0, workers=1, trigger_scope=scope)
    assert not (tmp_path / "c").exists() and registry.copies() == []
    protect(root, tmp_path / "c", "acme", registry=registry, rate=1.0, workers=1, strategy="ambient")
    assert [s.text for s in load_dataset(tmp_path / "c").samples].count("  \t ") == 2


def test_a_lone_surrogate_caption_is_refused_before_any_image_is_marked(tmp_path, registry, monkeypatch):
    """Issue #27.10: the caption "\\ud800" raised UnicodeEncodeError (a traceback) after the images were
    marked; now protect refuses the metadata line before any work."""
    root = _small_dataset(tmp_path / "ds", {f"{i:02d}.png": _noise_image(i) for i in range(4)})
    _noise_image(4).save(root / "04.png")
    with open(root / "metadata.jsonl", "a") as fh:
        fh.write('{"file_name": "04.png", "text": "bad \\ud800 caption"}\n')
    marked = []
    real = protect_mod.mark_file
    monkeypatch.setattr(protect_mod, "mark_file", lambda *a, **k: marked.append(a) or real(*a, **k))
    with pytest.raises(TracemarkError, match=r"metadata.jsonl:5: field 'text' holds a lone surrogate"):
        protect(root, tmp_path / "c", "acme", registry=registry, rate=1.0, workers=1)
    assert marked == [] and not (tmp_path / "c").exists() and registry.copies() == []


def test_defaults_are_the_measured_configuration_and_dry_run_writes_nothing(tmp_path):
    """Issue #28.1/28.3: no options = spread 3.2/255, visual selection, 2% raised to 50 marked samples
    (recorded, so materialize re-derives it); `--dry-run` prints the count and the forecast only."""
    import os
    import subprocess
    import sys

    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import make_sample_dataset

    data = make_sample_dataset(tmp_path / "data", n=600, size=32, seed=3, fmt="png")
    env = {**os.environ, "TRACEMARK_HOME": str(tmp_path / "nohome"), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", "protect", str(data), "--dry-run"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0 and "would mark 50 of 600" in p.stdout and "white box" in p.stdout, p.stdout + p.stderr
    assert not (tmp_path / "nohome").exists()
    reg = Registry.init(tmp_path / "home")
    res = protect(data, tmp_path / "c", "acme", registry=reg, workers=1)
    copy = reg.copies()[0]
    assert res.n_marked == 50 and copy.rate == 0.02
    assert copy.params["strength"] == 3.15 and copy.params["selection"] == "visual" and copy.params["min_marked"] == 50
    assert res.forecast is not None and res.forecast.enough
    assert res.psnr_min >= 38.0
