#!/usr/bin/env bash
# Pretrain stage on the bundled sample: biLSTM LM, 2 Ray workers, DeepSpeed ZeRO-2 on CPU,
# then export; and the CE-only variant. Prints the first and last losses (they fall).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}" DEMO_OUT="${DEMO_OUT:-runs/demo}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$DEMO_OUT}"
DATA="$DEMO_OUT/data/corpus"
if [ ! -f "$DATA/manifest.json" ]; then
  echo "demo_pretrain: $DATA not found: run scripts/demo_data_prep.sh first" >&2
  exit 1
fi
mkdir -p "$DEMO_OUT/ray"
train() {  # NAME [--set overrides]: a fresh run each time (the same name would resume the old one)
  local name=$1; shift
  rm -rf "$DEMO_OUT/ray/$name"
  # stdout is the command's JSON result (kept next to the run); progress shows on the terminal
  "$PY" -m pretrain train --config pretrain/configs/demo.yaml --data "$DATA" \
    --set "ray.storage_path=$DEMO_OUT/ray" "ray.name=$name" "$@" > "$DEMO_OUT/ray/$name.json"
}
# PEvoLM's objective (0.25 CE + 0.75 KL to the PSSM), exported for finetune; then the same model
# with cross-entropy only, for the run comparison at the end (CE curves side by side).
train pretrain-demo
"$PY" -m pretrain export --run "$DEMO_OUT/ray/pretrain-demo" --out "$DEMO_OUT/models/bilstm" > /dev/null
train pretrain-demo-ce model.pssm_head=false loss.w_ce=1.0 loss.w_kl=0.0 "wandb.tags=[demo,bilstm,ce-only]"
"$PY" - "$DEMO_OUT/ray/pretrain-demo/metrics.jsonl" "$DEMO_OUT/ray/pretrain-demo-ce/metrics.jsonl" <<'PYEOF'
import json, sys
kl, ce = ([json.loads(line) for line in open(path)] for path in sys.argv[1:])
first, last = kl[0], kl[-1]
print(f"pretrain demo: joint loss {first['joint']:.4f} (step {first['step']}) -> {last['joint']:.4f} "
      f"(step {last['step']}); CE {first['ce']:.4f} -> {last['ce']:.4f}; "
      f"perplexity {first['perplexity']:.2f} -> {last['perplexity']:.2f}")
print(f"pretrain demo, CE only: CE {ce[0]['ce']:.4f} -> {ce[-1]['ce']:.4f} (step {ce[-1]['step']})")
if not last["joint"] < first["joint"] or not ce[-1]["ce"] < ce[0]["ce"]:
    sys.exit("pretrain demo: the loss did not fall")
PYEOF
