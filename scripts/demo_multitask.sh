#!/usr/bin/env bash
# Multitask stage of the demo: train the encoder (MLM + ss3/ss8/disorder + localization/membrane)
# on the demo shards with 2 Ray workers, evaluate on the test shards, export for finetune.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEMO_OUT="${DEMO_OUT:-runs/demo}"
D="$DEMO_OUT/data"
for shard in corpus ss_train deeploc_train ss_test deeploc_test; do
  if [ ! -f "$D/$shard/manifest.json" ]; then
    echo "demo_multitask: $D/$shard missing (run scripts/demo_data_prep.sh first)" >&2
    exit 2
  fi
done
"$PY" -m multitask train --config multitask/configs/demo.yaml --set \
  "mixture.sources=[{path: $D/corpus, weight: 0.4}, {path: $D/ss_train, weight: 0.3}, {path: $D/deeploc_train, weight: 0.3}]" \
  "eval.ss_test=$D/ss_test" "eval.deeploc_test=$D/deeploc_test" \
  "ray.storage_path=$DEMO_OUT/runs" ray.name=multitask ray.num_workers=2 \
  --export "$DEMO_OUT/models/multitask"
echo "demo_multitask: evaluation in $DEMO_OUT/runs/multitask/eval.md, model in $DEMO_OUT/models/multitask"
