"""Does a copy-level attack (``tracemark.evaluation.attacks.COPY_ATTACKS``) remove the mark from leaked files?

For each issued copy given, the attack is applied to the whole copy (as an abuser holding it
would), the attacked images are written to a scratch folder, and ``trace_files`` (the product's
leak tracing, with the original data for the content projection) is run on the attacked copy and
on the copy as issued. Printed per copy: the true licensee's z before and after, whether it is still
named, how many images the attack touched and how many of those were the marked ones, and the
PSNR of the touched images against the issued files (what the attack costs the abuser).

    python -m research.copy_attack --group results/tmp/grid/groups/spread-trigger-r0.02-faces \
        --licensees lic000 lic001 --attack average_removal --params 3 4 6
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    from PIL import Image

    from tracemark.evaluation.attacks import COPY_ATTACKS, COPY_GRIDS
    from tracemark.marking.metrics import psnr
    from tracemark.registry.database import Registry
    from tracemark.detection.tracing import trace_files

    ap = argparse.ArgumentParser()
    ap.add_argument("--group", type=Path, required=True, help="a grid group folder (home/ + copies/)")
    ap.add_argument("--licensees", nargs="+", default=["lic000"])
    ap.add_argument("--attack", default="average_removal")
    ap.add_argument("--params", type=float, nargs="*", default=None)
    ap.add_argument("--data", type=Path, default=Path("results/tmp/grid/data/faces_1000_11"))
    ap.add_argument("--out", type=Path, default=Path("results/copy_attacks.jsonl"))
    a = ap.parse_args(argv)
    reg = Registry(a.group / "home")
    fn = COPY_ATTACKS[a.attack]
    for lic in a.licensees:
        copy_dir = a.group / "copies" / lic
        marked = {m["file_name"] for c in reg.copies() if c.licensee == lic for m in c.marked}
        files = sorted(p for p in copy_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images = [np.asarray(Image.open(p).convert("RGB"), np.float32) for p in files]

        def z_of(folder: Path) -> tuple[float, bool]:
            v = trace_files(folder, reg, data_dir=a.data)
            s = [x for x in v.scores if x.licensee == lic][0]
            return round(float(s.z), 2), lic in v.named

        before = z_of(copy_dir)
        for param in a.params or COPY_GRIDS[a.attack]:
            attacked = fn(images, param)
            touched = [i for i, (x, y) in enumerate(zip(images, attacked)) if not np.array_equal(x, np.clip(np.rint(y), 0, 255))]
            with tempfile.TemporaryDirectory() as tmp:
                for p, y in zip(files, attacked):
                    out = Path(tmp) / p.relative_to(copy_dir).with_suffix(".png")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8)).save(out)
                after = z_of(Path(tmp))
            hits = sum(files[i].relative_to(copy_dir).as_posix() in marked for i in touched)
            cost = float(np.mean([psnr(images[i], np.clip(np.rint(attacked[i]), 0, 255)) for i in touched])) if touched else None
            row = {"group": a.group.name, "licensee": lic, "attack": a.attack, "param": param, "n_images": len(files),
                   "n_marked": len(marked), "touched": len(touched), "touched_marked": hits,
                   "z_before": before[0], "named_before": before[1], "z_after": after[0], "named_after": after[1],
                   "psnr_touched": round(cost, 2) if cost else None}
            print(json.dumps(row), flush=True)
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
