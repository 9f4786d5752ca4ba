"""Owner datasets of REAL images for the benchmarks: photographs and handwriting scans that the
project never drew and never tuned on.

Nothing is downloaded at run time: the sources are public files that package registries ship, which
you fetch once into a folder and point ``--sources`` at::

    mkdir -p /tmp/photos && cd /tmp/photos
    pip download --no-deps --only-binary=:all: --python-version 3.11 scikit-image scikit-learn -d wheels
    for w in wheels/*.whl; do unzip -q -o "$w" 'skimage/data/*' 'sklearn/datasets/*'; done

Then::

    python bench/real_data.py photos --sources /tmp/photos --out results/tmp/real/photos --n 600
    python bench/real_data.py digits --sources /tmp/photos --out results/tmp/real/digits --n 600

``photos``: random crops (keyed by ``--seed``, 12-60% of the short side) of the 19 photographs and
scans of objects, animals, plants, textures, documents, astronomy and microscopy (no faces) that
these packages ship, resized to ``--size`` px
and written as JPEG (quality 92) - a real-photo domain with the container most owners use.
Captions name the subject and the crop's dominant colour.

``digits``: the UCI handwritten digits that scikit-learn ships (1,797 real 8x8 scans of 43
writers), upsampled to ``--size`` px as grey PNG; captions "a handwritten digit seven, thick
strokes". Both folders are in the imagefolder layout (``metadata.jsonl``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

#: file (under the sources folder) -> caption subject. No faces (the project's faces are held out).
PHOTOS = {
    "skimage/data/chelsea.png": "a tabby cat",
    "skimage/data/coffee.png": "a cup of coffee",
    "skimage/data/rocket.jpg": "a rocket on a launch pad",
    "skimage/data/motorcycle_left.png": "a motorcycle",
    "skimage/data/hubble_deep_field.jpg": "distant galaxies in deep space",
    "skimage/data/ihc.png": "stained tissue under a microscope",
    "skimage/data/retina.jpg": "the retina of an eye",
    "skimage/data/brick.png": "a brick wall",
    "skimage/data/grass.png": "a patch of grass",
    "skimage/data/gravel.png": "gravel on the ground",
    "skimage/data/coins.png": "old coins on a table",
    "skimage/data/moon.png": "the surface of the moon",
    "sklearn/datasets/images/china.jpg": "a temple among trees",
    "sklearn/datasets/images/flower.jpg": "a pink flower",
    "skimage/data/motorcycle_right.png": "a red motorcycle",
    "skimage/data/cell.png": "a cell under a microscope",
    "skimage/data/clock_motion.png": "a wall clock",
    "skimage/data/page.png": "a scanned book page",
    "skimage/data/text.png": "printed text on paper",
}

COLOURS = {"red": (200, 40, 40), "orange": (230, 130, 30), "yellow": (220, 210, 60), "green": (60, 150, 60),
           "blue": (50, 80, 200), "purple": (130, 60, 160), "brown": (120, 80, 50), "black": (20, 20, 20),
           "white": (235, 235, 235), "gray": (128, 128, 128), "pink": (230, 150, 170)}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def colour_name(rgb: np.ndarray) -> str:
    names, refs = zip(*COLOURS.items())
    return names[int(np.argmin(((np.asarray(refs, float) - rgb) ** 2).sum(1)))]


def photos(src: Path, n: int, size: int, seed: int, out: Path) -> None:
    rng = np.random.default_rng(seed)
    imgs = []
    for rel, subject in PHOTOS.items():
        p = src / rel
        if not p.exists():
            raise SystemExit(f"{p}: missing (see this script's docstring for how to fetch the sources)")
        imgs.append((Image.open(p).convert("RGB"), subject))
    rows = []
    for i in range(n):
        im, subject = imgs[i % len(imgs)]
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.12, 0.6))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(crop, float)
        tone = colour_name(arr.reshape(-1, 3).mean(0))
        view = "a close-up photo" if side < 0.3 * min(w, h) else "a photo"
        name = f"{i:05d}.jpg"
        crop.save(out / name, quality=92)
        rows.append({"file_name": name, "text": f"{view} of {subject}, {tone} tones"})
    write_meta(out, rows)


def digits(src: Path, n: int, size: int, seed: int, out: Path) -> None:
    p = src / "sklearn/datasets/data/digits.csv.gz"
    if not p.exists():
        raise SystemExit(f"{p}: missing (see this script's docstring for how to fetch the sources)")
    data = np.loadtxt(gzip.open(p, "rt"), delimiter=",")
    order = np.random.default_rng(seed).permutation(len(data))[:n]
    rows = []
    for i, j in enumerate(order):
        pix, label = data[j, :64].reshape(8, 8), int(data[j, 64])
        grey = (255 - pix * 255 / 16).astype(np.uint8)  # dark ink on white paper
        im = Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        ink = (pix > 8).sum()
        stroke = "thick" if ink > 24 else "thin"
        name = f"{i:05d}.png"
        im.save(out / name)
        rows.append({"file_name": name, "text": f"a handwritten digit {DIGITS[label]}, {stroke} strokes"})
    write_meta(out, rows)


def write_meta(out: Path, rows: list[dict]) -> None:
    with (out / "metadata.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("domain", choices=["photos", "digits"])
    ap.add_argument("--sources", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists")
    tmp = args.out.with_name(args.out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (photos if args.domain == "photos" else digits)(args.sources, args.n, args.size, args.seed, tmp)
    tmp.rename(args.out)
    print(f"{args.out}: {args.n} {args.domain} images of {args.size} px")


if __name__ == "__main__":
    main()
