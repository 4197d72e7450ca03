#!/usr/bin/env bash
# The whole pipeline on the bundled sample: each stage's demo script in order.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_OUT="${DEMO_OUT:-runs/demo}" PY="${PY:-.venv/bin/python}" SHARED="${SHARED:-../shared}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$DEMO_OUT}"
mkdir -p "$DEMO_OUT"
for stage in data_prep pretrain multitask finetune cluster; do
  script="scripts/demo_${stage}.sh"
  [ -f "$script" ] || continue
  echo "=== demo: $stage"
  bash "$script"
done
