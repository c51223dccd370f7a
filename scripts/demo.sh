#!/usr/bin/env bash
# Install nbhr into .venv, write a synthetic archive, process it on the embedded default
# (SQLite + local processes) and print per-subject HR and the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${1:-demo_archive}
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
export NBHR_DB_URL=${NBHR_DB_URL:-sqlite:///nbhr.sqlite}
[ -d "$DEMO_DIR/video" ] || .venv/bin/nbhr demo "$DEMO_DIR"
# The classical estimators (the default) and the NBHRnet that ships with nbhr, side by side.
.venv/bin/nbhr run "$DEMO_DIR" --estimator pos --estimator chrom --estimator green \
    --estimator pbvn --estimator nbhrnet
.venv/bin/nbhr results --level subject
.venv/bin/nbhr evaluate --level recording
.venv/bin/nbhr evaluate --level window
