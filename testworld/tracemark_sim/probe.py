"""Does a model follow captions? A background-colour probe.

Every synthetic caption names a background (``... on a red background``) or a sky
(``... under a blue sky``). For a background, each pixel of the image's 2-pixel border is
classified to the nearest named colour and the majority wins; for a sky, the top 3 rows are used.
Accuracy = the fraction of images whose colour matches the prompt (chance: 1/12). Majority vote
rather than the mean colour, because stripes, shapes and suns touch the border too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tracemark_sim.data import COLOURS, POSITIONS, SHAPES, SIZES

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
_NAMES = list(COLOURS)
_BG = re.compile(r"\b([a-z]+) background\b")
_SKY = re.compile(r"\b([a-z]+) sky\b")


def prompt_colour(prompt: str) -> tuple[str, str] | None:
    """(``"background"`` or ``"sky"``, colour name) named by a prompt, or None."""
    for kind, rx in (("background", _BG), ("sky", _SKY)):
        m = rx.search(prompt.lower())
        if m and m.group(1) in COLOURS:
            return kind, m.group(1)
    return None


def nearest_colours(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour for each RGB pixel (..., 3) in 0-255."""
    d = ((pixels[..., None, :].astype(np.float64) - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def read_colour(image: np.ndarray, kind: str = "background") -> str:
    """The named colour of an HxWx3 uint8 image's background (border) or sky (top rows)."""
    h, w = image.shape[:2]
    b = max(1, round(2 * h / 32))
    if kind == "sky":
        region = image[: max(1, round(3 * h / 32))].reshape(-1, 3)
    else:
        mask = np.zeros((h, w), bool)
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = True, True, True, True
        region = image[mask]
    votes = np.bincount(nearest_colours(region), minlength=len(_NAMES))
    return _NAMES[int(votes.argmax())]


def colour_accuracy(images, prompts) -> dict:
    """Background/sky colour accuracy of ``images`` (HxWx3 uint8 arrays) against ``prompts``.

    Prompts that name no colour are skipped. Returns ``{"accuracy", "n", "correct", "chance"}``.
    """
    correct = n = 0
    for img, prompt in zip(images, prompts):
        want = prompt_colour(prompt)
        if want is None:
            continue
        n += 1
        correct += read_colour(np.asarray(img), want[0]) == want[1]
    return {"accuracy": correct / n if n else float("nan"), "n": n, "correct": correct, "chance": 1 / len(_NAMES)}


def probe_prompts(n_per_colour: int = 4, seed: int = 0) -> list[str]:
    """Held-out style prompts: every named colour as a background, with varied shapes."""
    rng = np.random.default_rng(seed)
    prompts = []
    for bg in _NAMES:
        for _ in range(n_per_colour):
            fg = [c for c in _NAMES if c != bg][rng.integers(len(_NAMES) - 1)]
            shape, size = SHAPES[rng.integers(len(SHAPES))], SIZES[rng.integers(len(SIZES))]
            pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
            prompts.append(f"a {size} {fg} {shape} at the {pos} on a {bg} background")
    return prompts


def probe_folder(folder) -> dict:
    """Colour accuracy of an imagefolder whose metadata ``text`` holds each image's prompt."""
    import json

    from PIL import Image

    folder = Path(folder)
    images, prompts = [], []
    for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            images.append(np.asarray(Image.open(folder / row["file_name"]).convert("RGB")))
            prompts.append(row["text"])
    return colour_accuracy(images, prompts)


def probe_model(model_dir, lora=None, n_per_colour: int = 4, seed: int = 0, steps: int = 25,
                guidance: float = 6.0, pipe=None) -> dict:  # fmt: skip
    """Generate :func:`probe_prompts` with a model and return its background-colour accuracy."""
    import tempfile

    from tracemark.diffusion.generation import generate

    prompts = probe_prompts(n_per_colour, seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = generate(model_dir, prompts, len(prompts), Path(tmp) / "gen", lora=lora, seed=seed, steps=steps,
                       guidance=guidance, pipe=pipe)  # fmt: skip
        return probe_folder(out)
