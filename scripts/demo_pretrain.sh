#!/usr/bin/env bash
# Pretrain stage on the bundled sample: biLSTM LM, 2 Ray workers, DeepSpeed ZeRO-2 on CPU,
# then export. Prints the first and last joint loss (it falls).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}" DEMO_OUT="${DEMO_OUT:-runs/demo}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$DEMO_OUT}"
DATA="$DEMO_OUT/data/corpus"
if [ ! -f "$DATA/manifest.json" ]; then
  echo "demo_pretrain: $DATA not found: run scripts/demo_data_prep.sh first" >&2
  exit 1
fi
RUN="$DEMO_OUT/ray/pretrain-demo"
rm -rf "$RUN"  # a fresh run each time (the same name would resume the old one)
mkdir -p "$DEMO_OUT/ray"
# stdout is each command's JSON result (kept next to the run); progress shows on the terminal
"$PY" -m pretrain train --config pretrain/configs/demo.yaml --data "$DATA" \
  --set "ray.storage_path=$DEMO_OUT/ray" ray.name=pretrain-demo > "$DEMO_OUT/ray/pretrain-demo.json"
"$PY" -m pretrain export --run "$RUN" --out "$DEMO_OUT/models/bilstm" > /dev/null
"$PY" - "$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
log = [json.loads(line) for line in open(sys.argv[1])]
first, last = log[0], log[-1]
print(f"pretrain demo: joint loss {first['joint']:.4f} (step {first['step']}) -> {last['joint']:.4f} "
      f"(step {last['step']}); CE {first['ce']:.4f} -> {last['ce']:.4f}; "
      f"perplexity {first['perplexity']:.2f} -> {last['perplexity']:.2f}")
if not last["joint"] < first["joint"]:
    sys.exit("pretrain demo: the loss did not fall")
PYEOF
