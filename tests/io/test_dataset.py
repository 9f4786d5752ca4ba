"""Bad input: every case gives a TracemarkError naming the file and the problem."""

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark.io.dataset import check_image_header, list_images, load_dataset, read_image


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
    (root / "sub" / "metadata.jsonl").write_text('{"file_name": "b.png", "text": "hello"}\n')
    ds = load_dataset(root)
    assert sorted(s.file_name for s in ds.samples) == ["a.png", "sub/b.png"]
    assert {s.text for s in ds.samples} == {"x", "hello"}
    (root / "metadata.jsonl").unlink()
    (root / "sub" / "metadata.jsonl").unlink()
    (root / "metadata.csv").write_text("file_name,text\na.png,x\n")
    (root / "sub" / "metadata.csv").write_text("file_name,text\nb.png,hello\n")
    assert sorted(s.file_name for s in load_dataset(root).samples) == ["a.png", "sub/b.png"]


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


def _meta_folder(tmp_path, n=3):
    import json as _json

    import numpy as _np
    from PIL import Image as _Image

    d = tmp_path / "d"
    d.mkdir()
    for i in range(n):
        _Image.fromarray(_np.full((16, 16, 3), (20 * i) % 256, _np.uint8)).save(d / f"{i}.png")
    (d / "metadata.jsonl").write_text("".join(_json.dumps({"file_name": f"{i}.png", "text": f"c{i}"}) + "\n"
                                              for i in range(n)))
    return d


def test_mixed_metadata_formats_are_refused(tmp_path):
    """Issue #15.10: Hugging Face imagefolder refuses mixed metadata; so do we."""
    d = _meta_folder(tmp_path)
    (d / "sub").mkdir()
    (d / "sub" / "metadata.csv").write_text("file_name,text\n")
    with pytest.raises(TracemarkError, match="both metadata.jsonl and metadata.csv"):
        load_dataset(d)


def test_csv_rows_with_extra_fields_and_a_user_line_column(tmp_path):
    d = _meta_folder(tmp_path)
    (d / "metadata.jsonl").unlink()
    (d / "metadata.csv").write_text("file_name,text,__line__\n0.png,c0,keep\n1.png,c1,me\n")
    ds = load_dataset(d)
    assert [s.extra for s in ds.samples] == [{"__line__": "keep"}, {"__line__": "me"}]  # not dropped
    (d / "metadata.csv").write_text("file_name,text\n0.png,c0\n1.png,c1,surplus\n")
    with pytest.raises(TracemarkError, match=r"metadata.csv:3: more fields"):
        load_dataset(d)


def test_a_symlink_inside_the_dataset_keeps_its_own_name_in_the_copy(tmp_path):
    """Issue #15.10: metadata used to name a file the copy did not contain."""
    import json as _json
    import os as _os

    from tracemark.marking.protect import protect
    from tracemark.registry.database import Registry

    d = _meta_folder(tmp_path, n=12)
    _os.symlink("0.png", d / "link.png")
    with open(d / "metadata.jsonl", "a") as fh:
        fh.write(_json.dumps({"file_name": "link.png", "text": "the link"}) + "\n")
    reg = Registry.init(tmp_path / "home")
    protect(d, tmp_path / "c", "a", registry=reg, rate=0.5, workers=1)
    names = [_json.loads(line)["file_name"] for line in (tmp_path / "c" / "metadata.jsonl").read_text().splitlines()]
    assert "link.png" in names and all((tmp_path / "c" / n).is_file() for n in names)
    assert not (tmp_path / "c" / "link.png").is_symlink()


def test_a_lone_surrogate_escape_is_refused_when_the_metadata_is_read(tmp_path):
    """Issue #27.10: a caption holding the JSON escape "\\ud800" parsed, and failed only when the
    copy's metadata was written, after the images were marked."""
    from tracemark.io.dataset import read_rows

    root = write_ds(tmp_path / "d", [{"file_name": "a.png", "text": "fine"}, b'{"file_name": "b.png", "text": "x \\ud800"}\n'],
                    {"a.png": rgb(), "b.png": rgb()})
    with pytest.raises(TracemarkError, match=r"metadata.jsonl:2: field 'text' holds a lone surrogate") as e:
        read_rows(root / "metadata.jsonl")
    assert "\n" not in str(e.value)
    with pytest.raises(TracemarkError, match=r"metadata.jsonl:2:"):
        load_dataset(root)
    # a surrogate *pair* is an ordinary character (U+1F600)
    write_ds(tmp_path / "ok", [b'{"file_name": "a.png", "text": "smile \\ud83d\\ude00"}\n'], {"a.png": rgb()})
    assert load_dataset(tmp_path / "ok").samples[0].text == "smile \U0001F600"


@pytest.mark.parametrize("case", ["self_loop_named", "through_a_loop", "metadata_loop"])
def test_a_symlink_loop_in_the_dataset_is_a_one_line_error(tmp_path, case):
    """Issue #27.10: `ln -s loop loop` named by a row was a RuntimeError traceback; a metadata file that
    is a link loop was skipped without a word (its rows silently dropped)."""
    import os

    root = write_ds(tmp_path / "d", [{"file_name": "a.png", "text": "x"}], {"a.png": rgb()})
    os.symlink("loop", root / "loop")
    os.symlink("..", root / "up")  # a folder link to its parent: not walked, harmless
    if case == "metadata_loop":
        (root / "sub").mkdir()
        os.symlink("metadata.jsonl", root / "sub" / "metadata.jsonl")
    else:
        name = "loop" if case == "self_loop_named" else "loop/b.png"
        with open(root / "metadata.jsonl", "a") as fh:
            fh.write(json.dumps({"file_name": name, "text": "y"}) + "\n")
    with pytest.raises(TracemarkError, match="symlink loop") as e:
        load_dataset(root)
    assert "\n" not in str(e.value) and str(root) in str(e.value)


# --- columns (issue #30 item 7): diffusers' --caption_column / --image_column


def test_a_caption_column_named_caption_is_found_and_said(tmp_path):
    root = write_ds(tmp_path / "d", [{"file_name": "a.png", "caption": "a red fox", "id": 3}], {"a.png": rgb()})
    ds = load_dataset(root)
    assert (ds.caption_column, ds.samples[0].text, ds.samples[0].extra) == ("caption", "a red fox", {"id": 3})
    assert "'caption'" in ds.columns_note() and "--caption-column" in ds.columns_note()
    assert load_dataset(write_ds(tmp_path / "t", [{"file_name": "a.png", "text": "x"}], {"a.png": rgb()})) \
        .columns_note() is None  # the imagefolder conventions need no word


def test_several_or_no_caption_columns_are_one_line_naming_them_and_the_option(tmp_path):
    root = write_ds(tmp_path / "d", [{"file_name": "a.png", "text": "x", "prompt": "y"}], {"a.png": rgb()})
    with pytest.raises(TracemarkError, match=r"metadata.jsonl: several possible caption columns \('text', 'prompt'\); "
                                             r"pass caption_column$"):
        load_dataset(root)
    assert load_dataset(root, caption_column="prompt").samples[0].text == "y"
    assert load_dataset(root, caption_column="prompt").samples[0].extra == {"text": "x"}
    root = write_ds(tmp_path / "n", [{"file_name": "a.png", "title": "x"}], {"a.png": rgb()})
    with pytest.raises(TracemarkError, match=r"no caption column \(none of text, caption, prompt, description; "
                                             r"columns: 'file_name', 'title'\); pass caption_column$") as e:
        load_dataset(root)
    assert "\n" not in str(e.value)
    with pytest.raises(TracemarkError, match="caption column 'label'.*columns: 'file_name', 'title'"):
        load_dataset(root, caption_column="label")
    with pytest.raises(TracemarkError, match="^caption_column must name a column"):
        load_dataset(root, caption_column=" ")


def test_the_image_column_can_be_renamed_or_found(tmp_path):
    root = write_ds(tmp_path / "d", [{"path": "a.png", "caption": "x"}, {"path": "sub/b.png", "caption": "y"}],
                    {"a.png": rgb(), "sub/b.png": rgb()})
    ds = load_dataset(root, image_column="path")
    assert [s.file_name for s in ds.samples] == ["a.png", "sub/b.png"] and ds.image_column == "path"
    assert load_dataset(root).image_column == "path"  # the one usual image column present
    assert "images from column 'path'" in load_dataset(root).columns_note()
    with pytest.raises(TracemarkError, match=r"metadata.jsonl:1: missing 'image' \(columns: 'path', 'caption'; "
                                             r"image_column\)$"):
        load_dataset(root, image_column="image")
    with pytest.raises(TracemarkError, match="cannot be both the image and the caption column"):
        load_dataset(root, caption_column="path")
    # images only (the content basis of an audit): a caption column that cannot be told is no error
    amb = write_ds(tmp_path / "a", [{"file_name": "a.png", "text": "x", "caption": "y"}], {"a.png": rgb()})
    from tracemark.io.dataset import content_sample

    assert len(content_sample(amb)) == 1


def test_a_hugging_face_dataset_given_as_an_imagefolder_says_how_to_import_it(tmp_path):
    (tmp_path / "hf").mkdir()
    for name in ("state.json", "dataset_info.json"):
        (tmp_path / "hf" / name).write_text("{}")
    with pytest.raises(TracemarkError, match=r"hf: a Hugging Face dataset \(save_to_disk\), not an imagefolder: "
                                             r"import it once with import_hf \(`tracemark import-hf .*hf`\) and use the folder it writes"):
        load_dataset(tmp_path / "hf")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(TracemarkError, match="x.parquet: a parquet file.*tracemark import-hf"):
        load_dataset(tmp_path / "x.parquet")


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_the_content_sample_is_read_lazily_and_reduced(tmp_path, ext):
    """The content basis reads up to 2,000 originals: held at full size as float32 they took 6 GB
    for 512 px files (96 GB at 4 MP). They are decoded one at a time, at most CONTENT_SIDE on a
    side, and what the detector reads of them (the 32 x 32 grid) is what the full image gives."""
    from tracemark.evaluation.samples import make_sample_dataset
    from tracemark.io.dataset import CONTENT_SIDE, ContentImages, content_sample, read_image_rgb
    from tracemark.marking.schemes.spread import to_grid

    data = make_sample_dataset(tmp_path / "d", n=3, size=CONTENT_SIDE * 2, seed=1,
                               fmt="jpeg" if ext == "jpg" else "png")
    content = content_sample(data)
    assert isinstance(content, ContentImages) and len(content) == 3 and len(content[:2]) == 2
    img = content[0]
    assert img.shape == (CONTENT_SIDE, CONTENT_SIDE, 3) and img.dtype == np.float32
    full = read_image_rgb(content.paths[0])
    assert full.shape == (CONTENT_SIDE * 2, CONTENT_SIDE * 2, 3)
    assert np.abs(to_grid(img, 32) - to_grid(full, 32)).max() < 2.0  # gray levels, of 0..255
    small = read_image_rgb(content.paths[0], max_side=100)
    assert small.shape == (100, 100, 3)
