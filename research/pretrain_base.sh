#!/usr/bin/env bash
# Reproduce testworld/tracemark_sim/base_model/: the pretrained base "Stable Diffusion" of the CPU world.
# Every component is a stock diffusers/transformers class (AutoencoderKL, UNet2DConditionModel,
# CLIPTextModel, SD 1.x's CLIPTokenizer, DDIMScheduler).
#
#   research/pretrain_base.sh            # ~100 min on 2 CPU threads (VAE 33 + 7 min, UNet 44 min, measured)
#   RESUME=1 research/pretrain_base.sh   # continue an interrupted run from its last checkpoints
#
# 1. Tokenizer: SD 1.x's CLIP BPE (49,408 tokens), rebuilt from the merges file that ships in the
#    open-clip-torch wheel (pip download, no other network; the wheel is not installed).
# 2. Data: 10,000 procedural images of the "open" vocabulary mixture (shapes, textures,
#    landscapes with ~850 xkcd colour names, synonyms, framing phrases and style words; faces are
#    held out so an owner's faces dataset is a domain the base never saw), seed 1234.
# 3. VAE: AutoencoderKL (32, 64) channels, 32x32x3 -> 16x16x4, 5000 steps on 16x16 crops,
#    batch 32, AdamW lr 2e-3 cosine, MSE + 1e-6 KL, seed 0; then 1000 steps on whole images,
#    batch 16, lr 1e-3 (GroupNorm statistics of a crop are not those of a whole image).
# 4. UNet + text encoder from scratch on the VAE's latents: STEPS (default 4500) steps, batch 32,
#    AdamW lr 1e-3, cosine with 200 warmup steps, EMA 0.999, v-prediction, 10% caption dropout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-/tmp/tracemark-pretrain}
STEPS=${STEPS:-4500}
THREADS=${THREADS:-2}
mkdir -p "$WORK"
if [ ! -f "$WORK/open_clip/open_clip_torch-3.3.0-py3-none-any.whl" ]; then
  "$PY" -m pip download --no-deps -q -d "$WORK/open_clip" open-clip-torch==3.3.0
fi
if [ ! -f "$WORK/data/metadata.jsonl" ]; then
  "$PY" -m tracemark_sim.cli make-data "$WORK/data" --n 10000 --domain open --seed 1234
fi
if [ ! -f "$WORK/vae_crops/config.json" ]; then
  "$PY" -m tracemark_sim.cli pretrain-vae --data "$WORK/data" --out "$WORK/vae_crops" --steps 5000 --lr 2e-3 \
    --batch-size 32 --crop 16 --seed 0 --threads "$THREADS" ${RESUME:+--resume}
fi
if [ ! -f "$WORK/vae/config.json" ]; then  # GroupNorm needs whole images at the end
  "$PY" -m tracemark_sim.cli pretrain-vae --data "$WORK/data" --out "$WORK/vae" --steps 1000 --lr 1e-3 \
    --batch-size 16 --crop 0 --seed 1 --threads "$THREADS" --init-from "$WORK/vae_crops" ${RESUME:+--resume}
fi
"$PY" -m tracemark_sim.cli pretrain --data "$WORK/data" --out "$WORK/base" --steps "$STEPS" --seed 0 \
  --threads "$THREADS" --save-every 250 --vae "$WORK/vae" \
  --tokenizer "$WORK/open_clip/open_clip_torch-3.3.0-py3-none-any.whl" ${RESUME:+--resume}
# Commit only the model files (no checkpoints/): testworld/tracemark_sim/base_model/
DEST=testworld/tracemark_sim/base_model
rm -rf "$DEST.new" && mkdir -p "$DEST.new"
for entry in model_index.json scheduler text_encoder tokenizer unet vae training.json; do
  cp -r "$WORK/base/$entry" "$DEST.new/"
done
cp "$WORK/vae/training.json" "$DEST.new/vae/training.json"
cp "$WORK/vae_crops/training.json" "$DEST.new/vae/training_crops.json"
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
"$PY" -m tracemark_sim.cli probe --model "$DEST"
