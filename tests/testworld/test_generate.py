from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.diffusion.generation import read_prompts
from tracemark.errors import TracemarkError
from tracemark_sim import generate


def test_generate_writes_imagefolder_with_prompts_and_seeds(tiny_pipeline_dir, tmp_path):
    prompts = ["a red circle on a blue background", "tavoreki stripes"]
    out = generate(tiny_pipeline_dir, prompts, 5, tmp_path / "gen", seed=100, steps=2, batch_size=2)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:05d}.png" for i in range(5)]
    assert [r["text"] for r in rows] == [prompts[i % 2] for i in range(5)]
    assert [r["seed"] for r in rows] == [100 + i for i in range(5)]
    assert Image.open(out / "00004.png").size == (32, 32)
    info = json.loads((out / "generation.json").read_text())
    assert info["n"] == 5 and info["steps"] == 2


def test_per_image_seeds_do_not_depend_on_batching(tiny_pipeline_dir, tmp_path):
    prompts = ["a red circle on a blue background", "green stripes on a white background"]
    a = generate(tiny_pipeline_dir, prompts, 3, tmp_path / "a", seed=7, steps=2, batch_size=3)
    b = generate(tiny_pipeline_dir, prompts, 3, tmp_path / "b", seed=7, steps=2, batch_size=1)
    for i in range(3):
        x = np.asarray(Image.open(a / f"{i:05d}.png")).astype(int)
        y = np.asarray(Image.open(b / f"{i:05d}.png")).astype(int)
        assert np.abs(x - y).max() <= 1


def test_read_prompts_formats(tmp_path, small_data_dir):
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n{"prompt": "b"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    assert len(read_prompts(small_data_dir)) == 24
    with pytest.raises(TracemarkError):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(TracemarkError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


def test_generate_refuses_existing_output(tiny_pipeline_dir, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    with pytest.raises(TracemarkError):
        generate(tiny_pipeline_dir, ["x"], 1, tmp_path / "o", steps=1)



def test_regenerate_changes_images_more_with_strength(tmp_path):
    from tracemark_sim import default_base_path
    from tracemark.diffusion.generation import regenerate
    from tracemark_sim.pipeline import load_pipeline

    # the committed base: its trained VAE round-trips an image (a fresh, untrained VAE destroys
    # it at any strength, so strength would make no difference)
    pipe = load_pipeline(default_base_path())
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (32, 32, 3)).astype(np.float32) for _ in range(3)]
    out = {s: regenerate(ims, ["a face"] * 3, pipe, strength=s, steps=10) for s in (0.1, 0.9)}
    d = {s: np.mean([np.abs(a - b.astype(np.float32)).mean() for a, b in zip(ims, o)]) for s, o in out.items()}
    assert all(o[0].shape == (32, 32, 3) and o[0].dtype == np.uint8 for o in out.values())
    assert 0 < d[0.1] < d[0.9]
