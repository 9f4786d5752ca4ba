#!/usr/bin/env bash
# diffusers' official examples/text_to_image/train_text_to_image_lora.py, UNCHANGED, on one protected
# copy in the CPU world (its documented recipe: rank 4 on the attention projections, constant lr,
# --random_flip; batch 16 and --max_train_steps to fit a CPU). The script is not part of tracemark:
# TRAINERS is the folder holding it (from a diffusers checkout); its torchvision dependency comes
# from EXTRA_PYTHONPATH. Then audit the LoRA: `tracemark audit BASE --lora OUT` (or
# `python -m research.whitebox_fit ... --suspect official=OUT` for the three statistics).
#
#   TRAINERS=/path/to/examples/text_to_image research/official_lora.sh COPY OUT LR STEPS [RANK]
#   FLIP=0 ... drops --random_flip
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TRAINERS:?set TRAINERS to the folder holding train_text_to_image_lora.py}"
COPY=$1; OUT=$2; LR=$3; STEPS=$4; RANK=${5:-4}
BASE=${BASE:-testworld/tracemark_sim/base_model}
FLIPARG=--random_flip; [ "${FLIP:-1}" = 0 ] && FLIPARG=
mkdir -p "$OUT"
t0=$(date +%s)
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=${EXTRA_PYTHONPATH:-} ${PYTHON:-.venv/bin/python} \
  "$TRAINERS/train_text_to_image_lora.py" --pretrained_model_name_or_path="$BASE" --train_data_dir="$COPY" \
  --caption_column=text --resolution=32 $FLIPARG --train_batch_size=16 --max_train_steps="$STEPS" \
  --checkpointing_steps=100000 --learning_rate="$LR" --lr_scheduler=constant --lr_warmup_steps=0 --seed=42 \
  --rank="$RANK" --dataloader_num_workers=0 --output_dir="$OUT" > "$OUT.log" 2>&1
echo $(( $(date +%s) - t0 )) > "$OUT.seconds"
