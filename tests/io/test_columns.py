"""Other column layouts (issue #30 item 7): a dataset whose captions are under ``caption`` (or whose
images are under ``path``) is protected, re-derived, shadowed, fine-tuned and audited as diffusers'
scripts would read it with ``--caption_column`` / ``--image_column``; the copy keeps the source's
column names and the registry records the columns it was read with."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from tracemark.errors import TracemarkError
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.io.dataset import load_dataset
from tracemark.marking.materialize import materialize
from tracemark.marking.protect import protect

from registry_helpers import fix_master_key


def relabel(src, dst, image="file_name", caption="text", also=None):
    """A copy of the imagefolder ``src`` whose metadata names its columns ``image`` / ``caption``
    (``also``: more columns per row, e.g. a second caption-like column)."""
    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()]
    with open(dst / "metadata.jsonl", "w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({image: r["file_name"], caption: r["text"], **(also(i) if also else {})}) + "\n")
    return dst


def file_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_data(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("cols") / "data", n=12, size=48, seed=4, fmt="mixed")


def test_a_caption_column_dataset_is_protected_keeping_its_column_and_recording_it(base_data, registry, tmp_path):
    data = relabel(base_data, tmp_path / "photos", caption="caption", also=lambda i: {"id": i})
    res = protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.25, min_marked=0, workers=1)
    assert (res.caption_column, res.image_column) == ("caption", "file_name")
    assert "captions from column 'caption'" in res.columns_note
    rows = [json.loads(line) for line in (tmp_path / "copy" / "metadata.jsonl").read_text().splitlines()]
    assert all(set(r) == {"file_name", "caption", "id"} for r in rows)
    word = registry.copies()[0]
    assert word.params["caption_column"] == "caption" and word.params["image_column"] == "file_name"
    assert sum(r["caption"].split()[0] not in {"a", "an"} for r in rows) == res.n_marked  # the trigger went in
    from tracemark.marking.protect import plan_copy

    assert plan_copy(data, min_marked=0).columns_note == res.columns_note  # --dry-run says it too
    # diffusers' loader reads the copy with --caption_column caption
    datasets = pytest.importorskip("datasets")
    hf = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "copy"), split="train")
    assert "caption" in hf.column_names and sorted(hf["caption"]) == sorted(r["caption"] for r in rows)


def test_explicit_columns_are_recorded_and_materialize_rederives_the_copy_bit_for_bit(base_data, registry, tmp_path):
    # two caption-like columns: ambiguous without --caption-column, so the recorded choice is what counts
    data = relabel(base_data, tmp_path / "photos", image="path", caption="prompt", also=lambda i: {"text": f"n{i}"})
    with pytest.raises(TracemarkError, match="several possible caption columns.*pass caption_column$"):
        protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.25, min_marked=0, workers=1)
    res = protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.25, min_marked=0, workers=1,
                  caption_column="prompt", image_column="path")
    assert res.columns_note is None  # given, not found
    rows = [json.loads(line) for line in (tmp_path / "copy" / "metadata.jsonl").read_text().splitlines()]
    assert all(list(r) == ["path", "prompt", "text"] for r in rows)
    assert sum(r["text"] != f"n{i}" for i, r in enumerate(rows)) == 0  # the other column is untouched
    issued = file_hashes(tmp_path / "copy")
    got = materialize(registry, "acme", tmp_path / "again")
    assert file_hashes(tmp_path / "again") == issued and got.n_marked == res.n_marked
    wds = materialize(registry, "acme", tmp_path / "wds", fmt="webdataset")
    import tarfile

    with tarfile.open(wds.shards[0]) as tar:
        row = json.loads(tar.extractfile(sorted(m for m in tar.getnames() if m.endswith(".json"))[0]).read())
    assert set(row) == {"path", "prompt", "text"}


def test_shadow_and_whitebox_read_the_original_with_the_recorded_columns(base_data, registry, tmp_path):
    from tracemark.audit.whitebox import whitebox_probes
    from tracemark.audit.shadows import registered_dataset

    data = relabel(base_data, tmp_path / "photos", image="image", caption="caption", also=lambda i: {"text": "x"})
    protect(data, tmp_path / "copy", "acme", registry=registry, rate=0.25, min_marked=0, workers=1,
            caption_column="caption")
    name, chash = registered_dataset(registry, data)  # the columns recorded with the copy, not found again
    assert name == "photos" and chash == registry.datasets()[0]["content_hash"]
    with pytest.raises(TracemarkError, match="content differs"):
        registered_dataset(registry, data, columns=("text", None))  # other captions: another dataset
    probes, subsets = whitebox_probes(registry.copies(), registry, data)
    assert len(probes) == registry.copies()[0].n_marked and all(p.prompt.split()[-1] != "x" for p in probes)


def test_finetune_reads_the_caption_column_it_is_given(base_data, tmp_path):
    from tracemark.diffusion.training import ImageCaptionDataset, read_imagefolder

    data = relabel(base_data, tmp_path / "photos", caption="caption", also=lambda i: {"prompt": f"p{i}"})
    rows = read_imagefolder(data, caption_column="prompt")
    assert [c for _, c in rows] == [f"p{i}" for i in range(12)]
    assert ImageCaptionDataset(data, 32, caption_column="caption")[0]["caption"].startswith("a")
    with pytest.raises(TracemarkError, match="several possible caption columns"):
        read_imagefolder(data)
    import inspect

    from tracemark.diffusion.training import finetune
    from tracemark.audit.shadows import train_shadows
    from tracemark.cli.models import finetune_cmd, shadow_cmd

    for fn in (finetune_cmd, shadow_cmd, finetune, train_shadows):  # the options reach the trainer
        assert {"caption_column", "image_column"} <= set(inspect.signature(fn).parameters), fn.__name__


def test_the_cli_takes_the_column_options_and_says_what_it_found(base_data, tmp_path):
    env = {**os.environ, "TRACEMARK_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tracemark", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)

    assert run("init").returncode == 0
    fix_master_key(tmp_path / "home")
    data = relabel(base_data, tmp_path / "photos", caption="caption", also=lambda i: {"text": "x"})
    p = run("protect", data, "-l", "acme", "-o", tmp_path / "c", "--rate", "0.25", "--min-marked", "0")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "--caption-column" in p.stderr
    assert p.stderr.startswith("error:") and "Traceback" not in p.stderr
    p = run("protect", data, "-l", "acme", "-o", tmp_path / "c", "--rate", "0.25", "--min-marked", "0",
            "--caption-column", "caption")
    assert p.returncode == 0, p.stderr
    only = relabel(base_data, tmp_path / "captioned", caption="caption")  # one usual name: found, and said
    p = run("protect", only, "--dry-run", "--min-marked", "0")
    assert p.returncode == 0 and "captions from column 'caption'" in p.stdout, p.stderr
    p = run("protect", only, "-l", "beta", "-o", tmp_path / "d", "--rate", "0.25", "--min-marked", "0")
    assert p.returncode == 0 and "captions from column 'caption'" in p.stdout, p.stderr


def test_a_finetune_trains_on_the_given_caption_column(base_data, tmp_path):
    import dataclasses

    pytest.importorskip("torch")
    from tracemark.diffusion.training import SD15, TRAINING_INFO, finetune
    from tracemark_sim import build_tiny_pipeline

    small = dataclasses.replace(SD15, name="small-sd15", resolution=32, batch_size=2, mixed_precision="no",
                                save_every=10)
    base = build_tiny_pipeline(tmp_path / "tiny", seed=0)
    data = relabel(base_data, tmp_path / "photos", caption="caption", also=lambda i: {"text": f"n{i}"})
    with pytest.raises(TracemarkError, match="several possible caption columns"):
        finetune(data, base, tmp_path / "a", preset=small, steps=1, progress=False)
    out = finetune(data, base, tmp_path / "b", preset=small, steps=1, progress=False, caption_column="caption")
    info = json.loads((out / TRAINING_INFO).read_text())
    assert info["config"]["caption_column"] == "caption"
