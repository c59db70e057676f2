#!/usr/bin/env bash
# Rebuild maskid-eyes-v2 (OMZ face-reid-0095 + the trained eye-region branch) in one command:
#
#   training/reproduce_eyes_v2.sh [CACHE_DIR] [OUT_ONNX]
#       (defaults: /tmp/maskid-cache  runs/eyes_v2/maskid-eyes-v2.onnx)
#
# 1. the product's face detection over shared/data/train and M2FRED (resumable), 2. OMZ chips of
# every face + 2 synthetic masked copies of each unmasked training photo, 3. the frozen backbone's
# last 128 x 8 x 8 map for every chip, 4. the branch's training (its own copy of the expansion
# conv, row weights and pooling head; CosFace + masked<->unmasked term, 8 epochs, lr 1e-3, seed 0;
# the epoch with the best dev proxy is kept), 5. export to ONNX (the backbone's graph + the branch). Dev/test identities are fixed in python/maskid/evaluation/splits.py and
# never trained on. To ship: cp OUT_ONNX python/maskid/data/models/, then
# `python benchmarks/accuracy.py --write-settings` measures its threshold. Wall time on 2 CPU
# cores: about 40 minutes (training/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${MASKID_SHARED:-../shared/data}
cache=${1:-/tmp/maskid-cache}
out=${2:-runs/eyes_v2/maskid-eyes-v2.onnx}
for d in glint23 celeba lfw rmfd; do
    [ -d "$data/train/$d" ] || { echo "reproduce_eyes_v2: $data/train/$d not found (set MASKID_SHARED=.../shared/data)" >&2; exit 2; }
done
[ -d "$data/eval/m2fred" ] || { echo "reproduce_eyes_v2: $data/eval/m2fred not found" >&2; exit 2; }
export PYTHONPATH=training MASKID_SHARED="$data"
mkdir -p "$cache" "$(dirname "$out")"
start=$(date +%s)
OMP_NUM_THREADS=1 python -m maskid_train.facecache detect --out "$cache/faces.npz"
OMP_NUM_THREADS=1 python -m maskid_train.facecache chips --faces "$cache/faces.npz" \
    --model omz-face-reid-0095 --out "$cache/chips-omz.npy" --masked-copies 2
OMP_NUM_THREADS=2 python -m maskid_train.eyehead features --chips "$cache/chips-omz" --work "$cache/eyes-v2" --expand
OMP_NUM_THREADS=2 python -m maskid_train.eyehead train --chips "$cache/chips-omz" --work "$cache/eyes-v2" \
    --expand --epochs 8 --lr 1e-3 --distill 1.0 --margin 0.2 --real-repeat 10 --seed 0
python -m maskid_train.eyehead export --work "$cache/eyes-v2" --weight 1.0 --out "$out"
echo "dev proxy per epoch: $cache/eyes-v2/train.json; wall time $(( $(date +%s) - start )) s; model: $out"
