#!/usr/bin/env bash
# The quick start (README): set up .venv, then train a small SeMask Swin FPN on the generated
# semask_shapes dataset (written under $DETECTRON2_DATASETS, default ./datasets, on first use),
# evaluate it on the val split, and draw images | ground truth | predictions side by side.
# Outputs go to ./output/quickstart; extra arguments are config overrides (KEY VALUE ...).
# With --mask2former as the first argument: the same for a small SeMask Swin + Mask2Former
# (configs/quickstart/semask_mask2former_shapes.yaml), outputs in ./output/quickstart_mask2former.
# With --panoptic: that model on the generated semask_shapes_panoptic dataset, evaluated for PQ,
# mask AP and mIoU, predictions drawn as panoptic segments
# (configs/quickstart/semask_mask2former_shapes_panoptic.yaml, ./output/quickstart_panoptic).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/dev/setup_env.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
CONFIG=configs/quickstart/semask_fpn_shapes.yaml
OUT=./output/quickstart
DATASET=semask_shapes_val
if [ "${1:-}" = "--mask2former" ]; then
  shift
  CONFIG=configs/quickstart/semask_mask2former_shapes.yaml
  OUT=./output/quickstart_mask2former
fi
if [ "${1:-}" = "--panoptic" ]; then
  shift
  CONFIG=configs/quickstart/semask_mask2former_shapes_panoptic.yaml
  OUT=./output/quickstart_panoptic
  DATASET=semask_shapes_panoptic_val
fi
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-./datasets}"
# One intra-op thread unless the caller says otherwise: on 2 cores, two OpenMP threads train
# about 1.5x faster on an idle machine but several times slower as soon as another process
# competes for a core (threads wait for each other at every operator).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

SECONDS=0
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"
"$PY" tools/visualize_predictions.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"

# The evaluation's scores are the last record with sem_seg/mIoU in metrics.json.
"$PY" - "$OUT/metrics.json" "$DATASET" <<'EOF'
import json
import sys

with open(sys.argv[1]) as f:
    rows = [json.loads(line) for line in f if "sem_seg/mIoU" in line]
scores = rows[-1]
if "panoptic_seg/PQ" in scores:
    keys = ["panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "segm/AP"]
    keys.append("sem_seg/mIoU")
else:
    keys = ["sem_seg/mIoU", "sem_seg/pACC"]
names = {"sem_seg/pACC": "pixel accuracy"}
values = ", ".join("%s %.2f" % (names.get(k, k.split("/")[1]), scores[k]) for k in keys)
print("%s: %s" % (sys.argv[2], values))
EOF
echo "predictions: $OUT/predictions.png"
echo "quick start: $((SECONDS / 60)) min $((SECONDS % 60)) s (set-up excluded)"
