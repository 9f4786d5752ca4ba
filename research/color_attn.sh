#!/usr/bin/env bash
# Issue #32 lever: a position-free mark (the `color` scheme: a keyed colour remap) against the
# recipes that miss the spatial default: the product's recipe restricted to the attention
# projections (seed 100) and diffusers' official train_text_to_image_lora.py at its documented lr
# (1e-4, rank 4, 1000 steps), on a new licensee of the photos key-0 trigger home (a copy of it).
#   TRAINERS=/path/to/examples/text_to_image EXTRA_PYTHONPATH=<torchvision> research/color_attn.sh
set -uo pipefail
cd "$(dirname "$0")/.."
W=${W:-results/tmp/color}
mkdir -p $W
BASE=testworld/tracemark_sim/base_model
DATA=${DATA:-results/tmp/real/photos}
HOME0=${HOME0:-results/tmp/default_path/photos/home_trigger_0}
LIC=${LIC:-colorlic}
TM=".venv/bin/tracemark"
export OMP_NUM_THREADS=2
if [ ! -d $W/home ]; then cp -r $HOME0 $W/home; fi
export TRACEMARK_HOME=$W/home
[ -d $W/copy_$LIC ] || $TM protect $DATA -l $LIC -o $W/copy_$LIC --scheme color ${PROTECT_ARGS:-} 2>&1 | tail -3
audit() { $TM audit $BASE --lora $1 --json - > $1.audit.json 2>$1.audit.err; python3 -c "
import json; v=json.load(open('$1.audit.json')); print('$1', {c['licensee']: round(c['z'],2) for c in v['licensees']}, 'named', v.get('named'))"; }
for what in ${WHAT:-attn official}; do
  t=$(date +%s)
  if [ ! -f $W/$what/pytorch_lora_weights.safetensors ]; then
    case $what in
      attn) $TM finetune $W/copy_$LIC --base $BASE --out $W/$what --lora-targets attn --seed 100 > $W/$what.log 2>&1 ;;
      broad) $TM finetune $W/copy_$LIC --base $BASE --out $W/$what --seed 100 > $W/$what.log 2>&1 ;;
      official) research/official_lora.sh $W/copy_$LIC $W/$what 1e-4 1000 ;;
    esac
  fi
  echo "$what train $(( $(date +%s) - t )) s"; audit $W/$what
done
