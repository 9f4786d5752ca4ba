from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tracemark.errors import TracemarkError
from tracemark_sim import make_dataset
from tracemark_sim.data import COLOURS, DOMAINS, MIXTURES, render
from tracemark_sim.probe import colour_accuracy, prompt_colour, read_colour


def test_imagefolder_layout(tmp_path):
    out = make_dataset(tmp_path / "d", 12, "mixture", seed=1)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:05d}.png" for i in range(12)]
    assert all(r["text"] and isinstance(r["text"], str) for r in rows)
    assert {r["domain"] for r in rows} == set(MIXTURES["mixture"])
    for r in rows:
        im = Image.open(out / r["file_name"])
        assert im.size == (32, 32) and im.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == sorted([r["file_name"] for r in rows] + ["metadata.jsonl"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_deterministic_and_size_64(tmp_path):
    a = make_dataset(tmp_path / "a", 5, "faces", seed=2)
    b = make_dataset(tmp_path / "b", 5, "faces", seed=2)
    c = make_dataset(tmp_path / "c", 5, "faces", seed=3)
    assert (a / "00003.png").read_bytes() == (b / "00003.png").read_bytes()
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    assert (a / "00003.png").read_bytes() != (c / "00003.png").read_bytes()
    big = make_dataset(tmp_path / "big", 2, "landscapes", seed=0, size=64)
    assert Image.open(big / "00000.png").size == (64, 64)


def test_errors(tmp_path):
    with pytest.raises(TracemarkError, match="unknown domain"):
        make_dataset(tmp_path / "x", 3, "cats")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(TracemarkError, match="not an empty folder"):
        make_dataset(tmp_path / "full", 3)
    with pytest.raises(TracemarkError):
        make_dataset(tmp_path / "y", 0)


@pytest.mark.parametrize("domain", DOMAINS)
def test_captions_describe_images(domain):
    scenes = list(render(domain, 120, seed=11))
    assert len({s.caption for s in scenes}) > 60  # varied captions
    acc = colour_accuracy([s.image for s in scenes], [s.caption for s in scenes])
    # textures: where thick stripes cover half the border, "background" is ambiguous (~90%)
    assert acc["n"] == 120 and acc["accuracy"] >= (0.85 if domain == "textures" else 0.95), acc


def test_domains_have_different_statistics():
    means = {d: np.mean([s.image.std() for s in render(d, 60, seed=0)]) for d in DOMAINS}
    assert len({round(v) for v in means.values()}) >= 3, means


def test_probe_reads_colours():
    img = np.zeros((32, 32, 3), np.uint8) + np.array(COLOURS["cyan"], np.uint8)
    img[8:24, 8:24] = COLOURS["red"]
    assert read_colour(img) == "cyan"
    assert prompt_colour("a red circle on a cyan background") == ("background", "cyan")
    assert prompt_colour("hills under a blue sky") == ("sky", "blue")
    assert prompt_colour("nothing here") is None
