"""How far does each issued key align, by chance, with what every image of the dataset shares?

For every correlation-scheme copy of a registry: the key's z on the pooled features of unmarked
images of the domain (the owner's originals, or any folder of such images), raw and after
removing the dataset's content subspace (what `--data` does in trace-files and every audit). A key
with a large raw |z| would be accused by innocent images of the domain without `--data`.

    python -m research.key_alignment --home GROUP/home --data ORIGINALS [--images OTHER_IMAGES] [--n 300]

Session 6 (docs/learnability.md): on results/tmp/grid/groups/spread-s6-trigger-r0.1-faces, lic065
scored z 4.8 raw on 300 images of another faces dataset (faces_1000_12).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tracemark.detection import stats
from tracemark.io.dataset import content_sample, list_images, read_image_rgb
from tracemark.registry.database import Registry
from tracemark.marking.schemes import get_scheme
from tracemark.marking.schemes import scheme_params


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the original dataset (content subspace)")
    ap.add_argument("--images", type=Path, default=None, help="unmarked images to test on (default: --data)")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args(argv)
    reg = Registry(args.home)
    copies = [c for c in reg.copies() if get_scheme(c.scheme, **scheme_params(c)).kind == "correlation"]
    paths = list_images(args.images)[: args.n] if args.images else None
    images = [read_image_rgb(p) for p in paths] if paths else content_sample(args.data, n=args.n, seed=1)
    content = content_sample(args.data)
    rows = []
    for c in copies:
        sch = get_scheme(c.scheme, **scheme_params(c))
        m = stats.aggregate(sch.features(images), "correlation")
        B = stats.content_basis(sch.features(content))
        p = sch.key_vectors([reg.key_for_copy(c)])[0]
        z = [float(p @ v / np.sqrt((p * p) @ (v * v))) for v in (m, stats.project_out(m, B))]
        rows.append((c.licensee, *z))
    rows.sort(key=lambda r: -abs(r[1]))
    print(f"{len(rows)} keys on {len(images)} unmarked images; largest |z| first")
    print("licensee  raw z  projected z")
    for lic, raw, proj in rows[:10]:
        print(f"{lic:9s} {raw:6.2f} {proj:8.2f}")


if __name__ == "__main__":
    main()
