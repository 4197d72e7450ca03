#!/usr/bin/env bash
# Last demo step: compare the demo's W&B runs (offline run directories) side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}" DEMO_OUT="${DEMO_OUT:-runs/demo}"
"$PY" -m ops.compare "$DEMO_OUT" --out "$DEMO_OUT/compare" --metrics loss,grad_norm,lr,residues_per_s,padding_efficiency
cat "$DEMO_OUT/compare/comparison.md"
