#!/usr/bin/env bash
# Reproduce tracemark/sim/base_model/: the pretrained base "Stable Diffusion" of the CPU world.
#
#   scripts/pretrain_base.sh            # ~40 min on one CPU thread
#   RESUME=1 scripts/pretrain_base.sh   # continue an interrupted run from its last checkpoint
#
# Data: 8000 procedural images of the "mixture" domain (shapes, textures, landscapes; faces are
# held out so an owner's faces dataset is a domain the base never saw), seed 1234.
# Model: tracemark.sim.build_tiny_pipeline (seed 0), UNet + text encoder trained from scratch:
# 5000 steps, batch 32, AdamW lr 1e-3, cosine schedule with 200 warmup steps, EMA 0.999,
# v-prediction, 10% caption dropout, no flips. One torch thread (the machine has two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-/tmp/tracemark-pretrain}
mkdir -p "$WORK"
if [ ! -f "$WORK/data/metadata.jsonl" ]; then
  "$PY" -m tracemark.sim.cli make-data "$WORK/data" --n 8000 --domain mixture --seed 1234
fi
"$PY" -m tracemark.sim.cli pretrain --data "$WORK/data" --out "$WORK/base" --steps 5000 --seed 0 \
  --threads 1 --save-every 250 ${RESUME:+--resume}
# Commit only the model files (no checkpoints/): tracemark/sim/base_model/
DEST=tracemark/sim/base_model
rm -rf "$DEST.new" && mkdir -p "$DEST.new"
for entry in model_index.json scheduler text_encoder tokenizer unet vae training.json; do
  cp -r "$WORK/base/$entry" "$DEST.new/"
done
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
"$PY" -m tracemark.sim.cli probe --model "$DEST"
