#!/usr/bin/env bash
# Last demo step: compare the demo's runs like with like (ops.compare: each biLSTM variant with the
# others, each finetune head across embedders; downstream metrics as bars with bootstrap SEs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}" DEMO_OUT="${DEMO_OUT:-runs/demo}"
"$PY" -m ops.compare "$DEMO_OUT/ray" "$DEMO_OUT/runs" "$DEMO_OUT/finetune" --out "$DEMO_OUT/compare"
