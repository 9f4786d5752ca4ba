"""Bad input: every case gives a TracemarkError naming the file and the problem."""

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.dataset import check_image_header, list_images, load_dataset, read_image
from tracemark.errors import TracemarkError


def write_ds(root, rows, files=None):
    root.mkdir(parents=True, exist_ok=True)
    for name, im in (files or {}).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(im, bytes):
            p.write_bytes(im)
        else:
            im.save(p)
    with open(root / "metadata.jsonl", "wb") as fh:
        for r in rows:
            fh.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
    return root


def rgb(size=(32, 32)):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def test_loads_jsonl_csv_and_subfolders(tmp_path):
    root = write_ds(tmp_path / "d", [{"file_name": "a.png", "text": "x"}], {"a.png": rgb(), "sub/b.png": rgb()})
    (root / "sub" / "metadata.csv").write_text("file_name,text\nb.png,hello\n")
    ds = load_dataset(root)
    assert sorted(s.file_name for s in ds.samples) == ["a.png", "sub/b.png"]
    assert {s.text for s in ds.samples} == {"x", "hello"}


@pytest.mark.parametrize("rows,files,match", [
    ([{"file_name": "missing.png", "text": "x"}], {}, "missing"),
    ([b"{not json\n"], {}, "not valid JSON"),
    ([b'{"file_name": "a.png", "text": "caf\xe9"}\n'], {"a.png": rgb()}, "not valid UTF-8"),
    ([{"file_name": "a.png", "text": "x"}, {"file_name": "a.png", "text": "y"}], {"a.png": rgb()}, "duplicate"),
    ([], {}, "empty"),
    ([{"file_name": "a.png"}], {"a.png": rgb()}, "caption"),
    ([{"file_name": "../x.png", "text": "x"}], {}, "outside"),
])
def test_bad_metadata(tmp_path, rows, files, match):
    root = write_ds(tmp_path / "d", rows, files)
    with pytest.raises(TracemarkError, match=match) as e:
        load_dataset(root)
    assert "metadata.jsonl" in str(e.value) or str(root) in str(e.value)


def test_missing_folder_and_no_metadata(tmp_path):
    with pytest.raises(TracemarkError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TracemarkError, match="no metadata"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(TracemarkError, match="no image files"):
        list_images(tmp_path / "empty")


def _exif_rotated(path):
    im = rgb()
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, exif=exif)


@pytest.mark.parametrize("maker,match", [
    (lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
    (lambda p: rgb().convert("CMYK").save(p.with_suffix(".jpg")) or p.with_suffix(".jpg").rename(p), "CMYK"),
    (lambda p: Image.fromarray(np.zeros((32, 32), np.uint16)).save(p), "16-bit|not supported"),
    (lambda p: _palette_transparent(p), "transparency"),
    (lambda p: rgb().convert("LA").save(p), "LA"),
    (_exif_rotated, "EXIF orientation"),
    (lambda p: rgb((4, 4)).save(p), "too small"),
])
def test_bad_images_named(tmp_path, maker, match):
    p = tmp_path / "img.png"
    maker(p)
    with pytest.raises(TracemarkError, match=match) as e:
        read_image(p)
    assert str(p) in str(e.value)


def _palette_transparent(p):
    im = rgb().convert("P")
    im.info["transparency"] = 0
    im.save(p, transparency=0)


def test_truncated_image(tmp_path):
    p = tmp_path / "t.png"
    rgb((64, 64)).save(p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(TracemarkError, match="corrupt or truncated|not a readable") as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_decompression_bomb(tmp_path):
    p = tmp_path / "big.png"
    rgb((200, 200)).save(p)
    with pytest.raises(TracemarkError, match="pixel limit|too large"):
        check_image_header(p, max_pixels=10_000)
