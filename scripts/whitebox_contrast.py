"""Experiment: the white-box audit with and without the trigger contrast, on the grid's fine-tuned cells.

    python scripts/whitebox_contrast.py CELL:GROUP [CELL:GROUP ...]

Prints, per cell, the true licensee's z and p, the largest innocent z and who is named (Holm among
the group's 100 copies at alpha 0.01), for the plain residual and the trigger contrast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from tracemark.audit import audit_whitebox
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.registry import Registry
    from tracemark.sim import default_base_path

    work = Path("results/tmp/grid")
    for spec in sys.argv[1:]:
        cell, group = spec.split(":")
        cfg = json.loads((work / "cells" / cell / "model" / "training.json").read_text())["config"]
        truth = Path(cfg["data_dir"]).name
        reg = Registry(work / "groups" / group / "home")
        data = next((work / "data").glob("faces_1000_11"))
        base = Path(cfg["base"]) if Path(cfg["base"]).exists() else default_base_path()
        pipe = load_pipeline(base, lora=work / "cells" / cell / "model", device="cpu")
        for contrast in (True,):
            t0 = time.time()
            res = audit_whitebox(base, reg, data, lora=work / "cells" / cell / "model", pipe=pipe, contrast=contrast)
            v = res.verdict
            true = [s for s in v.scores if s.licensee == truth][0]
            inn = max(s.z for s in v.scores if s.licensee != truth)
            print(json.dumps({"cell": cell, "contrast": contrast, "z": round(true.z, 2), "p": true.p_value,
                              "p_holm": true.p_holm, "max_innocent_z": round(inn, 2), "named": v.named,
                              "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
