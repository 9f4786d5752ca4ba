"""Experiment: the white-box statistic on the trigger contrast (not the audit's residual), on grid cells.

    python scripts/whitebox_contrast.py CELL:GROUP [CELL:GROUP ...]

Prints, per cell, the true licensee's z and p, the largest innocent z and who is named (Holm among
the group's 100 copies at alpha 0.01), for the trigger contrast. The audit's own statistic (the plain
residual) is `tracemark audit --whitebox` / `tracemark.eval.whitebox`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path



def main() -> None:
    from tracemark.audit import _whitebox_probes
    from tracemark.diffusion.loading import load_pipeline
    from tracemark.registry import Registry
    from tracemark.sim import default_base_path
    from tracemark.trace import content_for, score_copies
    from tracemark.whitebox import denoiser_residuals

    work = Path("results/tmp/grid")
    for spec in sys.argv[1:]:
        cell, group = spec.split(":")
        cfg = json.loads((work / "cells" / cell / "model" / "training.json").read_text())["config"]
        truth = Path(cfg["data_dir"]).name
        reg = Registry(work / "groups" / group / "home")
        data = next((work / "data").glob("faces_1000_11"))
        base = Path(cfg["base"]) if Path(cfg["base"]).exists() else default_base_path()
        pipe = load_pipeline(base, lora=work / "cells" / cell / "model", device="cpu")
        t0 = time.time()
        copies = reg.copies()
        probes, subsets = _whitebox_probes(copies, reg, data)
        residuals = denoiser_residuals(pipe, probes, contrast=True)  # the audit's defaults otherwise
        v = score_copies(residuals, copies, reg, match_files=False, subsets=subsets,
                         content=content_for(reg, copies, data)[0])
        true = [s for s in v.scores if s.licensee == truth][0]
        inn = max(s.z for s in v.scores if s.licensee != truth)
        print(json.dumps({"cell": cell, "contrast": True, "z": round(true.z, 2), "p": true.p_value,
                          "p_holm": true.p_holm, "max_innocent_z": round(inn, 2), "named": v.named,
                          "seconds": round(time.time() - t0)}), flush=True)

if __name__ == "__main__":
    main()
