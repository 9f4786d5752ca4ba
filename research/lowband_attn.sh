#!/usr/bin/env bash
# Issue #32 lever: a mark in a lower band (DCT radius 3-8 of the 32 grid: what the test world's
# attention levels, 8x8 and 4x4 latents, can represent) vs the default band 3-16, under
# attention-only LoRA (the product's recipe restricted to the attention projections, seed 100), on
# a new licensee of the photos key-0 trigger home (a copy of it: the bench's own stays as it was).
set -uo pipefail
cd "$(dirname "$0")/.."
W=${W:-results/tmp/lowband}
mkdir -p $W
BASE=testworld/tracemark_sim/base_model
DATA=results/tmp/real/photos
TM=".venv/bin/tracemark"
export OMP_NUM_THREADS=2
if [ ! -d $W/home ]; then cp -r results/tmp/default_path/photos/home_trigger_0 $W/home; fi
export TRACEMARK_HOME=$W/home
[ -d $W/copy_lowband ] || $TM protect $DATA -l lowband -o $W/copy_lowband -p 'band=[3,8]' 2>&1 | tail -3
audit() { $TM audit $BASE --lora $1 --json - > $1.audit.json 2>$1.audit.err; python3 -c "
import json; v=json.load(open('$1.audit.json')); print('$1', {c['licensee']: round(c['z'],2) for c in v['licensees']}, 'named', v.get('named'))"; }
t=$(date +%s)
[ -f $W/attn/pytorch_lora_weights.safetensors ] || $TM finetune $W/copy_lowband --base $BASE --out $W/attn --lora-targets attn --seed 100 > $W/attn.log 2>&1
echo "attn finetune $(( $(date +%s) - t )) s"; audit $W/attn
