#!/usr/bin/env bash
# Issue #32: where does the tiny world's UNet store the mark? The product's recipe (rank 16, lr 2e-3,
# 800 steps, seed 100) on the photos key-0 trigger copy of initech (broad: z 4.81; attention only:
# -1.14), restricted to (a) the full-resolution level (16x16 latents: down_blocks.0, up_blocks.2,
# ResNets only: this world has no attention there, SD 1.5 has) or (b) every other level.
set -uo pipefail
cd "$(dirname "$0")/.."
W=${W:-results/tmp/levels}
mkdir -p $W
BASE=testworld/tracemark_sim/base_model
COPY=results/tmp/default_path/photos/k0trigger_initech
export TRACEMARK_HOME=results/tmp/default_path/photos/home_trigger_0 OMP_NUM_THREADS=2
TM=".venv/bin/tracemark"
# the broad target set's modules, split by level (full names: peft matches them as suffixes)
read -r FULL LOW < <(.venv/bin/python - <<'PY'
from diffusers import UNet2DConditionModel
from tracemark.diffusion.training import LORA_TARGETS
u = UNet2DConditionModel.from_pretrained("testworld/tracemark_sim/base_model", subfolder="unet")
names = [n for n, _ in u.named_modules() if any(n == s or n.endswith("." + s) for s in LORA_TARGETS["broad"])]
full = [n for n in names if n.startswith(("down_blocks.0.", "up_blocks.2."))]
print(",".join(full), ",".join(n for n in names if n not in full))
PY
)
audit() { $TM audit $BASE --lora $1 --json - > $1.audit.json 2>$1.audit.err; python3 -c "
import json; v=json.load(open('$1.audit.json')); print('$1', {c['licensee']: round(c['z'],2) for c in v['licensees']}, 'named', v.get('named'))"; }
for what in fullres lowres; do
  T=$FULL; [ $what = lowres ] && T=$LOW
  t=$(date +%s)
  [ -f $W/$what/pytorch_lora_weights.safetensors ] || $TM finetune $COPY --base $BASE --out $W/$what --lora-targets "$T" --seed 100 > $W/$what.log 2>&1
  echo "$what finetune $(( $(date +%s) - t )) s"; audit $W/$what
done
