"""Does a prompt with several licensees' triggers still elicit each learned mark? (stage-1 design probe)

The two-stage audit gives each of T licensee-scoped copies n/T stage-1 images. If a prompt can
carry m trigger words and the model still reproduces each learned mark, every copy gets m x as
many stage-1 images. This probe compares, on a grid model, each guilty copy's z from 64 images
prompted with its own trigger alone (m = 1) against 64 images whose prompt holds its trigger plus
m - 1 = 3 random other licensees' triggers, shuffled (m = 4).

    .venv/bin/python scripts/mixed_trigger_probe.py CELL_NAME GROUP_NAME LIC[,LIC...]

e.g. visible-trigger-lora-r0.1-seed0-optscells16-scopelicensee visible-cells16-trigger-licensee-r0.1-faces lic000
(folders under results/tmp/grid/cells and results/tmp/grid/groups). Measured: docs/audit.md.
"""
import json
import shutil
import sys
from pathlib import Path
import numpy as np
from tracemark.audit import _captions, _generate, QueryPlan
from tracemark.dataset import read_image_rgb
from tracemark.registry import Registry
from tracemark.trace import score_copies, trigger_of
from tracemark.sim.pipeline import load_pipeline

cell, group, truth = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
work = Path("results/tmp/grid")
cdir, gdir = work / "cells" / cell, work / "groups" / group
reg = Registry(gdir / "home")
copies = reg.copies()
by = {c.licensee: c for c in copies}
words = {c.id: trigger_of(c, reg) for c in copies}
pipe = load_pipeline(Path("tracemark/sim/base_model"), lora=cdir / "model")
rng = np.random.default_rng(5)
n = 64
res = {}

for m in (1, 4):
    prompts, targets = [], []
    for i in range(n):
        c = by[truth[i % len(truth)]]
        others = [x for x in copies if x.id != c.id]
        pick = [c] + [others[j] for j in rng.choice(len(others), m - 1, replace=False)]
        ws = [words[x.id] for x in pick]
        rng.shuffle(ws)
        caps = _captions(c)
        prompts.append(" ".join(ws) + " " + caps[rng.integers(len(caps))])
        targets.append(c.id)
    plan = QueryPlan(prompts, targets, [900_000 + i for i in range(n)], 2)
    shutil.rmtree(cdir / f"mixtrig{m}", ignore_errors=True)
    paths = _generate({"steps": 25, "guidance": 6.0}, plan, cdir / f"mixtrig{m}", pipe)
    imgs = [read_image_rgb(p) for p in paths]
    tc = [by[t] for t in truth]
    v = score_copies(imgs, tc, reg, match_files=False, subsets=plan.subsets(tc))
    res[m] = {s.licensee: round(s.z, 2) for s in v.scores}
    print("triggers per prompt", m, res[m], flush=True)
(cdir / "mixtrig.json").write_text(json.dumps(res))
