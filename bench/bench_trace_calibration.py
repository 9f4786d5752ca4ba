"""trace-files calibration under the default (visual) selection: do overlapping marked clusters of
several licensees make an innocent licensee look guilty?

300 64-px faces (the CPU world's generator), 5 licensees at 5% (raised to 30 marked each by the
default --min-marked), one fixed master key per draw; for each copy, 15 of its marked files
(resized 0.9, JPEG 75, renamed) among 40 unmarked originals are traced. Prints one line per trace
(the true licensee's z, every innocent's z and matched files, the marked-set overlaps) and a summary.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_trace_calibration.py --keys 24 [--selection visual]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.marking.protect import protect
from tracemark.registry.database import Registry, key_check_value
from tracemark.detection.tracing import trace_files


def fixed_registry(home: Path, seed: int) -> Registry:
    reg = Registry.init(home)
    master = hashlib.sha256(f"tracemark-test-master|{seed}".encode()).hexdigest()
    (home / "master.key").write_text(master + "\n")
    with sqlite3.connect(home / "registry.sqlite") as conn:
        conn.execute("UPDATE owner SET key_check = ? WHERE id = 1", (key_check_value(bytes.fromhex(master)),))
    return Registry(home)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=24)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--selection", default="visual")
    args = ap.parse_args()
    from tracemark_sim import make_dataset  # the test world draws the faces

    root = Path(tempfile.mkdtemp(prefix="trace-calib-"))
    data = make_dataset(root / "data", 300, "faces", seed=1, size=64)
    innocent, true, accused = [], [], 0
    for ms in range(args.first, args.keys):
        reg = fixed_registry(root / f"h{ms}", ms)
        for i in range(5):
            protect(data, root / f"c{ms}_{i}", f"L{i}", registry=reg, rate=0.05, workers=2, selection=args.selection)
        rng = np.random.default_rng(3)
        copies = reg.copies()
        for i, copy in enumerate(copies):
            marked = [m["file_name"] for m in copy.marked][:15]
            leak = root / f"leak{ms}_{i}"
            leak.mkdir()
            for n in marked:
                im = Image.open(root / f"c{ms}_{i}" / n).convert("RGB")
                im = im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.Resampling.BICUBIC)
                im.save(leak / f"{rng.integers(1 << 40):010x}.jpg", quality=75)
            others = [p for p in sorted(data.glob("*.png")) if p.name not in set(marked)]
            for k in rng.choice(len(others), 40, replace=False):
                shutil.copy(others[k], leak / f"{rng.integers(1 << 40):010x}.png")
            v = trace_files(leak, reg)
            inn = [(s.licensee, round(s.z, 2), s.n_images) for s in v.scores if s.licensee != copy.licensee]
            true.append(next(s.z for s in v.scores if s.licensee == copy.licensee))
            innocent += [z for _, z, _ in inn]
            accused += any(n != copy.licensee for n in v.named)
            ov = [len(set(copy.marked_ids) & set(c.marked_ids)) for c in copies if c.id != copy.id]
            print(ms, i, "named", v.named, "true z", round(true[-1], 2), "innocent", inn, "overlap", ov, flush=True)
    print(f"traces {len(true)}: true licensee z min {min(true):.2f}; traces naming an innocent {accused}; "
          f"innocent z mean {statistics.mean(innocent):.3f} sd {statistics.pstdev(innocent):.3f} "
          f"max {max(innocent):.2f}, above 3.09: {sum(z > 3.09 for z in innocent)} of {len(innocent)}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
