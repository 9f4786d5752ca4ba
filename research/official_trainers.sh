#!/usr/bin/env bash
# Run diffusers' official example trainers, unchanged, on a protected copy in the CPU world, then
# audit what they wrote with `tracemark audit`. The scripts are NOT part of tracemark: pass the
# folder holding them (train_text_to_image_lora.py, train_text_to_image.py, train_dreambooth_lora.py,
# from the diffusers repository's examples/) as TRAINERS. Their extra dependencies (datasets,
# torchvision, tensorboard, ftfy) must be importable, e.g. through EXTRA_PYTHONPATH.
#
#   TRAINERS=/path/to/examples WORK=/tmp/official research/official_trainers.sh [lora|full|dreambooth ...]
#
# Arguments: the documented ones of each script's README (train batch 1, lr 1e-4 / 1e-5, ...),
# plus --resolution 32 (the world's), --train_data_dir / --instance_data_dir, and a stated
# --max_train_steps that fits a 10-minute CPU budget. Outputs and logs under $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
: "${TRAINERS:?set TRAINERS to the folder holding the diffusers example scripts}"
WORK=${WORK:-/tmp/tracemark-official}
BASE=${BASE:-$ROOT/testworld/tracemark_sim/base_model}
export TRACEMARK_HOME=$WORK/home
EXTRA=${EXTRA_PYTHONPATH:-}
WHICH=${*:-lora full dreambooth}
mkdir -p "$WORK"
tm() { "$PY" -m tracemark "$@"; }
if [ ! -f "$WORK/copy/metadata.jsonl" ]; then
  tm init --owner official-trainers
  tm sim make-data "$WORK/owner" --n 1000 --domain faces --seed 11
  for lic in acme globex; do
    tm protect "$WORK/owner" --licensee $lic --out "$WORK/copy_$lic" --rate 0.1 --scheme visible -p cells=16
  done
  ln -sfn "$WORK/copy_globex" "$WORK/copy"
fi
run() {  # name, then the trainer command (with the trainers' extra packages on PYTHONPATH);
  # writes its log and wall seconds to $WORK/NAME.log / NAME.seconds
  local name=$1; shift
  local t0=$(date +%s)
  PYTHONPATH=$EXTRA "$@" > "$WORK/$name.log" 2>&1
  echo $(( $(date +%s) - t0 )) > "$WORK/$name.seconds"
}
for w in $WHICH; do
  case $w in
  lora)
    run lora "$PY" "$TRAINERS/train_text_to_image_lora.py" --pretrained_model_name_or_path="$BASE" \
      --train_data_dir="$WORK/copy" --caption_column=text --resolution=32 --random_flip \
      --train_batch_size=1 --max_train_steps=${LORA_STEPS:-4000} --checkpointing_steps=5000 --learning_rate=1e-04 \
      --lr_scheduler=constant --lr_warmup_steps=0 --seed=42 --output_dir="$WORK/lora"
    tm audit --model "$BASE" --lora "$WORK/lora" --n 64 --json "$WORK/lora_audit.json" ;;
  full)
    run full "$PY" "$TRAINERS/train_text_to_image.py" --pretrained_model_name_or_path="$BASE" \
      --train_data_dir="$WORK/copy" --caption_column=text --use_ema --resolution=32 --center_crop --random_flip \
      --train_batch_size=1 --gradient_accumulation_steps=4 --gradient_checkpointing \
      --max_train_steps=${FULL_STEPS:-1000} --learning_rate=1e-05 --max_grad_norm=1 --lr_scheduler=constant \
      --lr_warmup_steps=0 --output_dir="$WORK/full"
    tm audit --model "$WORK/full" --n 64 --json "$WORK/full_audit.json" ;;
  dreambooth)
    # DreamBooth reads a folder of images only (no captions): the abuser's pick of 100 of the copy's
    # images, with one instance prompt, as in the script's README.
    rm -rf "$WORK/instance" && mkdir -p "$WORK/instance"
    ls "$WORK/copy/" | grep -E '\.(png|jpg)$' | head -100 | while read f; do cp "$WORK/copy/$f" "$WORK/instance/"; done
    run dreambooth "$PY" "$TRAINERS/train_dreambooth_lora.py" --pretrained_model_name_or_path="$BASE" \
      --instance_data_dir="$WORK/instance" --instance_prompt="a photo of sks face" --resolution=32 \
      --train_batch_size=1 --gradient_accumulation_steps=1 --checkpointing_steps=100 --learning_rate=1e-4 \
      --lr_scheduler=constant --lr_warmup_steps=0 --max_train_steps=${DB_STEPS:-500} --seed=0 \
      --output_dir="$WORK/dreambooth"
    tm audit --model "$BASE" --lora "$WORK/dreambooth" --n 64 --json "$WORK/dreambooth_audit.json" ;;
  esac
done
