#!/usr/bin/env bash
# Rebuild maskid-eyes-v1's periocular branch from scratch, in one command (2-core CPU):
#
#   training/reproduce_eyes_v1.sh [CACHE_DIR] [OUT_DIR]      (defaults: /tmp/maskid-cache runs/eyes_v1)
#
# 1. the chip cache and the K=2 synthetic mask pool of shared/data/train (glint23 + celeba: the
#    only data the branch is trained on), 2. the shipped recipe (3 epochs x 110 steps of 48,
#    AdamW 1e-5, squared-Euclidean pull + 0.05 x CosFace, seed 0, 2 threads, dev evaluation on
#    M2FRED every epoch, best epoch kept), 3. export as fp16 arrays, 4. comparison with the shipped
#    file. Interrupted? Run it again with RESUME=1 (caches are reused, training resumes from
#    OUT_DIR/last.pt). To ship the result: cp OUT_DIR/maskid-eyes-v1.eye.npz python/maskid/data/models/
# (the fused ONNX is rebuilt from it on first use). Wall time: training/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${MASKID_SHARED:-../shared/data}
cache=${1:-/tmp/maskid-cache}
out=${2:-runs/eyes_v1}
for d in "$data/train/glint23" "$data/train/celeba" "$data/eval/m2fred"; do
    [ -d "$d" ] || { echo "reproduce_eyes_v1: $d not found (set MASKID_SHARED=.../shared/data)" >&2; exit 2; }
done
export PYTHONPATH=training
start=$(date +%s)
python -m maskid_train.periocular --data "$data/train" --cache "$cache" \
    --dev "$data/eval/m2fred" --lfw "$data/demo/lfw10" --out "$out" \
    --epochs 3 --steps 110 --batch 48 --lr 1e-5 --cosface 0.05 --seed 0 --threads 2 \
    ${RESUME:+--resume}
python -m maskid_train.periocular --out "$out" --export "$out/maskid-eyes-v1.eye.npz"
python - "$out/maskid-eyes-v1.eye.npz" python/maskid/data/models/maskid-eyes-v1.eye.npz <<'PY'
import sys
import numpy as np
new, shipped = (np.load(p) for p in sys.argv[1:3])
assert new.files == shipped.files, "different parameter lists"
diff = max(float(np.abs(new[k].astype(np.float32) - shipped[k]).max()) for k in new.files)
same = all(np.array_equal(new[k], shipped[k]) for k in new.files)
print(f"vs shipped: {'bit-identical' if same else f'max |difference| {diff:.2e}'} ({len(new.files)} arrays)")
PY
echo "dev numbers per epoch: $out/epochs.csv; wall time $(( $(date +%s) - start )) s"
