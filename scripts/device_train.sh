#!/usr/bin/env bash
# Train NBHRnet from scratch where a CUDA GPU is lent, as one prepared command inside a fixed
# time budget, and leave the results in OUT_DIR.
#
#   bash scripts/device_train.sh OUT_DIR [SUBJECTS] [SECONDS] [MINUTES]
#
# 1. Renders a synthetic neonatal archive (SUBJECTS infants x 2 recordings x SECONDS s; default
#    72 x 30 s) with every core and caches its windows through the workers' crop path
#    (`nbhr train --prepare-only`, windows every 30 frames).
# 2. Trains the paper's three stages as three runs, each starting from the previous run's
#    best.pt: ppg (RMSprop 3e-4, x0.2 every 10 epochs), hr on the reference PPG (1e-3, x0.2
#    every 15), fusion (1e-4). Whatever time is left after step 1, out of MINUTES in all
#    (default 9), is shared 58/10/30 % between them (--max-stage-minutes: each stage ends at the
#    first epoch end past its share). A stage that fails at once in bf16 is rerun in fp32.
# 3. Copies each stage's best.pt (ppg_best.pt, hr_best.pt, fusion_best.pt), all metrics
#    (metrics.jsonl), the configs (configs.json) and the log (train.log) to OUT_DIR as soon as
#    they exist, so a run cut short still returns what it finished. Export the ONNX where the
#    checkpoint lands: nbhr export-onnx OUT_DIR/fusion_best.pt --out model/nbhrnet.onnx
#
# Needs the project's runtime packages; on a machine without an index, carry wheels of those it
# lacks (sqlalchemy, alembic, mako, greenlet, dlib-bin) and put them on PYTHONPATH first.
# Checked on CPU with a tiny configuration: bash scripts/device_train.sh /tmp/dt 2 12 3
set -uo pipefail
out=$(realpath -m "${1:?usage: device_train.sh OUT_DIR [SUBJECTS] [SECONDS] [MINUTES]}")
subjects=${2:-72}
seconds=${3:-30}
minutes=${4:-9}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
work=${NBHR_TRAIN_WORK:-/tmp/nbhr_device_train}
mkdir -p "$out" "$work"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deadline=$((SECONDS + minutes * 60))
log="$out/train.log"
exec > >(tee -a "$log") 2>&1

common=(--data "$work/synthetic" --format synthetic --synthetic-subjects "$subjects"
    --synthetic-seconds "$seconds" --hop 30 --jobs "$(nproc)" --cache "$work/cache" --batch 12)

echo "== $(date -u +%FT%TZ) device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo none), $(nproc) cores"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
started=$SECONDS
"$py" -m nbhr train "${common[@]}" --out "$work/prepare" --prepare-only || exit 1
echo "== data ready in $((SECONDS - started)) s"

left=$((deadline - SECONDS))
# A stage's own start (imports, copying the windows into GPU memory) costs ~25 s outside
# its --max-stage-minutes; an epoch may run past the limit by itself.
share() { awk -v l="$left" -v p="$1" 'BEGIN { m = (l * p - 25) / 60; print (m < 0.2 ? 0.2 : m) }'; }

collect() {  # stage -> copy its results to $out
    local dir="$work/$1"
    [[ -f $dir/best.pt ]] && cp "$dir/best.pt" "$out/$1_best.pt"
    cat "$work"/{ppg,hr,fusion}/metrics.jsonl 2>/dev/null >"$out/metrics.jsonl"
    "$py" -c "import json,sys; print(json.dumps({a.split('/')[-2]: json.load(open(a)) for a in sys.argv[1:]}, indent=1))" \
        "$work"/{ppg,hr,fusion}/config.json >"$out/configs.json" 2>/dev/null || true
}

stage() {  # name minutes extra-args... ; reruns once in fp32 if bf16 fails within a minute
    local name=$1 mins=$2
    shift 2
    local t0=$SECONDS
    echo "== stage $name: up to $mins min"
    timeout $((${mins%.*} * 60 + 150)) "$py" -m nbhr train "${common[@]}" --stage "$name" \
        --epochs 200 --max-stage-minutes "$mins" --out "$work/$name" "$@"
    local rc=$?
    if ((rc != 0 && SECONDS - t0 < 60)); then
        echo "== stage $name failed (rc $rc) in $((SECONDS - t0)) s: again in fp32"
        rm -rf "${work:?}/$name"
        timeout $((${mins%.*} * 60 + 150)) "$py" -m nbhr train "${common[@]}" --stage "$name" \
            --epochs 200 --max-stage-minutes "$mins" --out "$work/$name" --precision fp32 "$@"
        rc=$?
    fi
    collect "$name"
    echo "== stage $name: rc $rc after $((SECONDS - t0)) s"
    return $rc
}

stage ppg "$(share 0.58)" --lr 3e-4 --lr-step-epochs 10 || exit 1
stage hr "$(share 0.10)" --lr 1e-3 --lr-step-epochs 15 --init "$work/ppg/best.pt" || exit 1
stage fusion "$(share 0.30)" --lr 1e-4 --lr-step-epochs 30 --init "$work/hr/best.pt"
echo "== done in $SECONDS s"
