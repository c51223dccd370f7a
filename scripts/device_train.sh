#!/usr/bin/env bash
# Train NBHRnet from scratch where a CUDA GPU is lent, as one prepared command, and export it.
#
#   bash scripts/device_train.sh OUT_DIR [SUBJECTS] [SECONDS] [EPOCHS] [LR]
#
# Renders a synthetic neonatal archive (SUBJECTS infants x 2 recordings x SECONDS s; default
# 60 x 60 s) with every core (--jobs), caches its windows through the workers' crop path, runs
# the staged training (ppg -> hr -> fusion, EPOCHS each, default 50; RMSprop at LR, default
# 1e-4, batch 12) on the GPU if there is one, exports best.pt to OUT_DIR/nbhrnet.onnx and
# leaves config.json and metrics.jsonl beside it. Everything else stays under /tmp.
#
# Needs the project's runtime packages; on a machine without an index, carry wheels of those it
# lacks (sqlalchemy, alembic, dlib-bin) and put them on PYTHONPATH first. Tested on CPU with a
# tiny configuration: bash scripts/device_train.sh /tmp/dt 2 12 1
set -euo pipefail
out=$(realpath -m "${1:?usage: device_train.sh OUT_DIR [SUBJECTS] [SECONDS] [EPOCHS] [LR]}")
subjects=${2:-60}
seconds=${3:-60}
epochs=${4:-50}
lr=${5:-1e-4}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=${NBHR_TRAIN_WORK:-/tmp/nbhr_device_train}
mkdir -p "$out" "$work"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$py" -m nbhr train --data "$work/synthetic" --format synthetic \
    --synthetic-subjects "$subjects" --synthetic-seconds "$seconds" --jobs "$(nproc)" \
    --stage all --epochs "$epochs" --batch 12 --lr "$lr" \
    --out "$work/run" --cache "$work/cache" --resume
"$py" -m nbhr export-onnx "$work/run/best.pt" --out "$out/nbhrnet.onnx"
cp "$work/run/config.json" "$work/run/metrics.jsonl" "$out/"
