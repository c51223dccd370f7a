#!/usr/bin/env bash
# The figures of model/weights/MODEL_CARD.md for an NBHRnet ONNX file, through the workers' own
# path (decode, face track, crops, onnxruntime), side by side with POS:
#   1. held-out synthetic neonatal archive (seed 100: subjects and pulses the training archive,
#      seed 0, never had), window level and recording level;
#   2. the real clips in ../shared/data (adult, forehead/cheek patches, --roi full).
# Usage: bash scripts/model_figures.sh MODEL.onnx [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
out=${2:-/tmp/nbhr_model_figures}
rm -rf "$out" && mkdir -p "$out"
nbhr=".venv/bin/nbhr"

$nbhr demo "$out/heldout" --subjects 6 --recordings 2 --seconds 30 --seed 100 >/dev/null
$nbhr run "$out/heldout" --db "sqlite:///$out/heldout.sqlite" --estimator pos \
    --estimator nbhrnet --model "$model" --json >/dev/null
for level in window recording; do
    $nbhr evaluate --db "sqlite:///$out/heldout.sqlite" --level $level --json \
        > "$out/heldout_$level.json"
done

$nbhr run ../shared/data/bias_eval --db "sqlite:///$out/real.sqlite" --roi full \
    --population adult --reference-table ../shared/data/reference_hr.csv \
    --estimator pos --estimator pbvn --estimator nbhrnet --model "$model" --json >/dev/null
$nbhr evaluate --db "sqlite:///$out/real.sqlite" --level recording --json > "$out/real_recording.json"

.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def f(v):
    return "-" if v is None else f"{v:.3g}"
for name in ("heldout_window", "heldout_recording", "real_recording"):
    for e in json.loads((out / f"{name}.json").read_text()):
        o = e["overall"]
        print(f"{name:18s} {e['estimator']:12s} n={o['n']:4d} coverage={f(o['coverage'])} "
              f"MAE={f(o['mae'])} MAPE={f(o['mape'])}% r={f(o['pearson_r'])} "
              f"within5={f(o['within_5bpm'])} ppg_r={f(e.get('ppg_r_mean'))}")
PY
