"""Hugging Face datasets on disk as input (issue #30 item 7): a ``save_to_disk`` folder or a folder of
parquet files is imported once, offline, into an imagefolder (images as stored, never re-encoded),
which protect, materialize and the white-box audit then read like any other original."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError

datasets = pytest.importorskip("datasets")

N = 10


def encoded(i: int, fmt: str) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, fmt, **({"quality": 85} if fmt ==
                                                                                              "JPEG" else {}))
    return buf.getvalue()


def hf_dataset():
    """N rows: an Image column (PNG and JPEG bytes), a ``caption`` column, an id and a list column."""
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": encoded(i, "PNG" if i % 2 else "JPEG"), "path": None} for i in range(N)],
         "caption": [f"a photo number {i}" for i in range(N)], "uid": [f"img-{i:03d}" for i in range(N)],
         "tags": [["x", str(i)] for i in range(N)]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                    "uid": datasets.Value("string"),
                                    "tags": datasets.Sequence(datasets.Value("string"))}))


def tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    ds = hf_dataset()
    ds.save_to_disk(str(root / "saved"))
    (root / "pq" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "pq" / "data" / "train-00000-of-00001.parquet"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(root / "dict"))
    return root


def test_save_to_disk_and_parquet_import_to_the_same_imagefolder_with_the_stored_bytes(hf_dirs, tmp_path):
    from tracemark.io.dataset import load_dataset
    from tracemark.io.huggingface import import_hf

    a = import_hf(hf_dirs / "saved", tmp_path / "a")
    assert (a.kind, a.n_rows, a.image_column, a.caption_column) == ("save_to_disk", N, "image", "caption")
    assert a.dropped == [] and a.detected == {"image": "image", "caption": "caption"}
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert rows[1] == {"file_name": "00000001.png", "caption": "a photo number 1", "uid": "img-001", "tags": ["x", "1"]}
    assert rows[0]["file_name"] == "00000000.jpg"
    for i, r in enumerate(rows):  # the bytes as stored: a JPEG is not re-encoded
        assert (tmp_path / "a" / r["file_name"]).read_bytes() == encoded(i, "PNG" if i % 2 else "JPEG")
    b = import_hf(hf_dirs / "pq", tmp_path / "b")
    assert b.kind == "parquet" and tree(tmp_path / "a") == tree(tmp_path / "b")
    import_hf(hf_dirs / "pq" / "data" / "train-00000-of-00001.parquet", tmp_path / "c")
    assert tree(tmp_path / "c") == tree(tmp_path / "a")
    ds = load_dataset(tmp_path / "a")  # an ordinary imagefolder, its caption column kept under its name
    assert ds.caption_column == "caption" and len(ds) == N


def test_splits_ids_and_bad_input_are_one_line_errors(hf_dirs, tmp_path):
    from tracemark.io.huggingface import import_hf

    with pytest.raises(TracemarkError, match=r"dict: several splits \(test, train\); pass split$"):
        import_hf(hf_dirs / "dict", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert import_hf(hf_dirs / "dict", tmp_path / "t", split="test").n_rows == 3
    with pytest.raises(TracemarkError, match="no split 'valid'"):
        import_hf(hf_dirs / "dict", tmp_path / "x", split="valid")
    res = import_hf(hf_dirs / "saved", tmp_path / "ids", id_column="uid")
    assert sorted(p.name for p in (tmp_path / "ids").iterdir())[:2] == ["img-000.jpg", "img-001.png"]
    assert res.id_column == "uid"
    with pytest.raises(TracemarkError, match="both be .*id_column 'caption' is not unique|cannot be a file name"):
        import_hf(hf_dirs / "saved", tmp_path / "x", id_column="caption")
    with pytest.raises(TracemarkError, match=r"no column 'label' \(columns: image, caption, uid, tags\); check "
                                             r"caption_column$"):
        import_hf(hf_dirs / "saved", tmp_path / "x", caption_column="label")
    with pytest.raises(TracemarkError, match="column 'uid' is not an Image column"):
        import_hf(hf_dirs / "saved", tmp_path / "x", image_column="uid")
    with pytest.raises(TracemarkError, match="already exists"):
        import_hf(hf_dirs / "saved", tmp_path / "ids")
    with pytest.raises(TracemarkError, match="not a Hugging Face dataset"):
        import_hf(tmp_path / "ids", tmp_path / "x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{not json")
    (tmp_path / "broken" / "dataset_info.json").write_text("{}")
    with pytest.raises(TracemarkError, match="broken: cannot read this Hugging Face dataset") as e:
        import_hf(tmp_path / "broken", tmp_path / "x")
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()
    two = hf_dataset().select(range(2))  # a second Image column (a mask): not a metadata value
    two = two.add_column("mask", [{"bytes": encoded(9, "PNG"), "path": None}] * 2).cast_column("mask", datasets.Image())
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(TracemarkError, match=r"several possible image columns \('image', 'mask'\); pass image_column$"):
        import_hf(tmp_path / "two", tmp_path / "x")
    res = import_hf(tmp_path / "two", tmp_path / "masked", image_column="image")
    assert res.dropped == ["mask"] and "mask" not in (tmp_path / "masked" / "metadata.jsonl").read_text()
    (tmp_path / "cut").mkdir()  # a parquet file cut short
    (tmp_path / "cut" / "p.parquet").write_bytes((hf_dirs / "pq" / "data" / "train-00000-of-00001.parquet")
                                                  .read_bytes()[:300])
    with pytest.raises(TracemarkError, match="cut: cannot read this Hugging Face dataset"):
        import_hf(tmp_path / "cut", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_imported_dataset_is_protected_materialized_and_audited_like_any_original(hf_dirs, registry, tmp_path):
    from tracemark.audit.whitebox import whitebox_probes
    from tracemark.io.huggingface import import_hf
    from tracemark.marking.materialize import materialize
    from tracemark.marking.protect import protect

    import_hf(hf_dirs / "saved", tmp_path / "photos")
    with pytest.raises(TracemarkError, match="Hugging Face dataset \\(save_to_disk\\).*tracemark import-hf"):
        protect(hf_dirs / "saved", tmp_path / "c0", "acme", registry=registry)
    res = protect(tmp_path / "photos", tmp_path / "copy", "acme", registry=registry, rate=0.3, min_marked=0,
                  workers=1)
    assert res.caption_column == "caption" and registry.copies()[0].params["caption_column"] == "caption"
    issued = tree(tmp_path / "copy")
    materialize(registry, "acme", tmp_path / "again")
    assert tree(tmp_path / "again") == issued
    probes, _ = whitebox_probes(registry.copies(), registry, tmp_path / "photos")
    assert len(probes) == res.n_marked
    # what diffusers' train_text_to_image.py loads: the copy, with --caption_column caption
    hf = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "copy"), split="train")
    assert {"image", "caption", "uid", "tags"} <= set(hf.column_names) and len(hf) == N


def test_the_import_hf_command_and_protect_never_importing_datasets(hf_dirs, tmp_path):
    env = {**os.environ, "TRACEMARK_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "-m", "tracemark", "import-hf", hf_dirs / "pq", "--out", tmp_path / "photos"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"Imported {N} rows" in p.stdout and "captions from column 'caption'" in p.stdout
    p = subprocess.run([sys.executable, "-m", "tracemark", "import-hf", hf_dirs / "dict", "--out", tmp_path / "x"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1 and p.stderr.startswith("error:") and "--split" in p.stderr and "Traceback" not in p.stderr
    # protecting an imagefolder never loads the datasets library (it is imported for HF input only)
    code = ("import sys; from registry_helpers import seeded_registry; from tracemark.marking.protect import protect; "
            f"r = protect({str(tmp_path / 'photos')!r}, {str(tmp_path / 'copy')!r}, 'acme', "
            f"registry=seeded_registry({str(tmp_path / 'home')!r}), rate=0.3, min_marked=0, workers=1); "
            "print(r.caption_column, 'datasets' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHONPATH": os.pathsep.join(  # registry_helpers is in tests/
                           filter(None, [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH")]))})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["caption", "False"]
    shutil.rmtree(tmp_path / "copy")
