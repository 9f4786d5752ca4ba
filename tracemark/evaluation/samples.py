"""A synthetic, natural-looking image-caption dataset for demos, tests and benchmarks.

Images have a 1/f ("pink") spectrum like photographs plus a captioned object, so detectors are
tested against realistic content energy, with nothing downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tracemark.io.safe_write import atomic_dir

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
           "purple": (130, 50, 160), "orange": (230, 130, 30), "white": (235, 235, 235), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle")
SCENES = ("a misty field", "a sandy beach", "a rocky hillside", "a quiet lake", "a city street", "a forest path")


def pink_noise(h: int, w: int, rng: np.random.Generator, beta: float = 0.9) -> np.ndarray:
    f = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None, :] ** 2
    f[0, 0] = 1.0
    chans = []
    tint = rng.uniform(60, 190, size=3)
    for c in range(3):
        x = np.real(np.fft.ifft2((rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / f**beta))
        chans.append((x - x.mean()) / (x.std() + 1e-9) * 40 + tint[c])
    return np.clip(np.stack(chans, -1), 0, 255)


def sample_image(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, str]:
    img = Image.fromarray(pink_noise(size, size, rng).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    r = int(size * rng.uniform(0.12, 0.25))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    where = ("left" if cx < size / 2 else "right")
    caption = f"a {colour} {shape} on the {where} of {SCENES[rng.integers(len(SCENES))]}"
    return np.asarray(img), caption


def make_sample_dataset(out: str | Path, n: int = 100, size: int = 128, seed: int = 0, fmt: str = "png") -> Path:
    """Write ``n`` images + metadata.jsonl to ``out`` (atomically). ``fmt``: png | jpeg | mixed."""
    out = Path(out)
    if out.exists():
        from tracemark.errors import TracemarkError

        raise TracemarkError(f"{out}: already exists")
    rng = np.random.default_rng(seed)
    with atomic_dir(out) as tmp:
        with open(tmp / "metadata.jsonl", "w") as meta:
            for i in range(n):
                arr, caption = sample_image(rng, size)
                ext = {"png": "png", "jpeg": "jpg"}.get(fmt) or ("jpg" if i % 2 else "png")
                name = f"{i:06d}.{ext}"
                if ext == "jpg":
                    Image.fromarray(arr).save(tmp / name, quality=90)
                else:
                    Image.fromarray(arr).save(tmp / name)
                meta.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    return out
