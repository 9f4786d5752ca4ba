#!/usr/bin/env bash
# diffusers' official examples/text_to_image/train_text_to_image.py (full fine-tuning of the UNet),
# UNCHANGED, on one protected copy in the CPU world: its README's recipe (--use_ema, batch 1 with 4
# gradient-accumulation steps, lr 1e-5, constant schedule, --max_grad_norm 1, --center_crop
# --random_flip) at the world's resolution, with --max_train_steps stated to fit a CPU (the README
# runs 15,000 at 512 px). It writes a whole pipeline; the audit reads it as a checkpoint of BASE:
#   tracemark audit OUT --base BASE     (the white box against the shadows registered for BASE)
#
#   TRAINERS=/path/to/examples/text_to_image research/official_full.sh COPY OUT STEPS [LR]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TRAINERS:?set TRAINERS to the folder holding train_text_to_image.py}"
COPY=$1; OUT=$2; STEPS=$3; LR=${4:-1e-05}
BASE=${BASE:-testworld/tracemark_sim/base_model}
mkdir -p "$OUT"
t0=$(date +%s)
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=${EXTRA_PYTHONPATH:-} ${PYTHON:-.venv/bin/python} \
  "$TRAINERS/train_text_to_image.py" --pretrained_model_name_or_path="$BASE" --train_data_dir="$COPY" \
  --caption_column=text --use_ema --resolution=32 --center_crop --random_flip --train_batch_size=1 \
  --gradient_accumulation_steps=4 --max_train_steps="$STEPS" --learning_rate="$LR" --max_grad_norm=1 \
  --lr_scheduler=constant --lr_warmup_steps=0 --checkpointing_steps=100000 --seed=42 \
  --dataloader_num_workers=0 --output_dir="$OUT" > "$OUT.log" 2>&1
echo $(( $(date +%s) - t0 )) > "$OUT.seconds"
