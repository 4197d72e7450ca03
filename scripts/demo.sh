#!/usr/bin/env bash
# The whole pipeline on the bundled sample: each stage's demo script in order, then where its
# outputs are. The terminal shows each stage, its progress and results; everything else (Ray's
# own messages, library warnings) goes to $DEMO_OUT/logs/ (README, "Logs").
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_OUT="${DEMO_OUT:-runs/demo}" PY="${PY:-.venv/bin/python}" SHARED="${SHARED:-../shared}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$DEMO_OUT}" WANDB_SILENT="${WANDB_SILENT:-true}"
export PROTLM_LOG_DIR="${PROTLM_LOG_DIR:-$DEMO_OUT/logs}"
mkdir -p "$DEMO_OUT" "$PROTLM_LOG_DIR"
echo "stage wall_s user_s sys_s" > "$DEMO_OUT/timings.txt"
stages=(data_prep pretrain multitask finetune compare)
for i in "${!stages[@]}"; do
  stage=${stages[$i]}
  script="scripts/demo_${stage}.sh"
  [ -f "$script" ] || continue
  echo
  echo "=== demo $((i + 1))/${#stages[@]}: $stage"
  t0=$SECONDS
  # wall, user and system seconds of the stage and every process it waited for (Ray's included)
  { TIMEFORMAT="$stage %R %U %S"; time bash "$script" 2>&3; } 3>&2 2>> "$DEMO_OUT/timings.txt"
  echo "=== $stage done in $((SECONDS - t0)) s"
done

count() { find "$@" 2>/dev/null | wc -l | tr -d ' '; }
echo
echo "=== demo finished in $((SECONDS / 60)) min $((SECONDS % 60)) s. Where things are:"
echo "  shards   $DEMO_OUT/data/{corpus,deeploc_train,deeploc_test,ss_train,ss_test}/ (manifest.json each)"
echo "  models   $DEMO_OUT/models/{bilstm,multitask}/ (model.safetensors, config.json, tokenizer.json)"
echo "  tables   $DEMO_OUT/finetune/results.md, $DEMO_OUT/runs/multitask/eval.md, $DEMO_OUT/compare/comparison.md"
echo "  plots    $DEMO_OUT/compare/ ($(count "$DEMO_OUT/compare" -name '*.png') PNG), $DEMO_OUT/finetune/deeploc/*/ ($(count "$DEMO_OUT/finetune/deeploc" -name '*.png') confusion matrices)"
echo "  W&B runs $DEMO_OUT/wandb/ (offline; 'wandb sync' uploads them)"
echo "  logs     $PROTLM_LOG_DIR/<stage>.log (everything not shown above; each names its Ray session's log directory)"
