#!/usr/bin/env bash
# Finetune demo: per-residue embeddings (one-hot baseline + every model exported under
# $DEMO_OUT/models/), then LA, mean-pool MLP, annotation transfer and majority class on DeepLoc
# (train: our_val with a 10% hold-out for early stopping; test: the DeepLoc test set), and the
# SeqVec CNN on secondary structure. Ends with the tables, also in $DEMO_OUT/finetune/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"; DEMO_OUT="${DEMO_OUT:-runs/demo}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$DEMO_OUT}" WANDB_SILENT="${WANDB_SILENT:-true}"
D="$DEMO_OUT/data"; OUT="$DEMO_OUT/finetune"
for shard in deeploc_train deeploc_test ss_train ss_test; do
  if [ ! -f "$D/$shard/manifest.json" ]; then
    echo "demo_finetune: $D/$shard missing (run scripts/demo_data_prep.sh first)" >&2
    exit 2
  fi
done
rm -rf "$OUT"; mkdir -p "$OUT"
ft() { "$PY" -m finetune "$@"; }

models=(onehot)
for m in bilstm multitask; do
  if [ -f "$DEMO_OUT/models/$m/config.json" ]; then models+=("$DEMO_OUT/models/$m"); fi
done

# stdout of each command is its result (JSON lines, results tables): kept in files under $OUT,
# the tables are printed at the end; progress and per-method results show as they come
for model in "${models[@]}"; do
  name=$(basename "$model")
  # one command embeds the four shard dirs (one Ray start). The actor pool leaves one of Ray's CPUs
  # for the Parquet reads, so a Ray of 3 logical CPUs runs 2 embedding actors on the 2 cores.
  ft embed --model "$model" --data "$D/deeploc_train" "$D/deeploc_test" "$D/ss_train" "$D/ss_test" \
    --out "$OUT/embeddings/$name" --config finetune/configs/demo.yaml --num-cpus 3 > "$OUT/embed_$name.jsonl"
  # The heads train with the engine in this process (--local): on 2 cores a Ray Train launch per
  # head cost more than the head itself (pretrain and multitask show the Ray Train path). To keep
  # the demo within 15 minutes, LA and the MLP train 4 epochs on proteins cropped to 200 residues
  # and the CNN 6 epochs (the configs' 6 / 400 / 8 are for real runs; `make proof` uses its own).
  ft deeploc --config finetune/configs/demo.yaml --name "$name" --group demo-finetune \
    --epochs 4 --set data.max_length=200 \
    --train "$OUT/embeddings/$name/deeploc_train" --test "$OUT/embeddings/$name/deeploc_test" \
    --out "$OUT/deeploc/$name" --local > "$OUT/deeploc_$name.md"
  ft ss --config finetune/configs/demo_cnn.yaml --name "$name" --group demo-finetune --epochs 6 \
    --train "$OUT/embeddings/$name/ss_train" --test "$OUT/embeddings/$name/ss_test" \
    --out "$OUT/ss/$name" --local > "$OUT/ss_$name.md"
done

ft table "$OUT"/ss/*/results.json --out "$OUT/ss" --title "Per-residue CNN on frozen embeddings" > /dev/null
ft table "$OUT"/deeploc/*/results.json --out "$OUT" --methods la,mlp,at,majority \
  --title "DeepLoc localisation (10 classes) and membrane vs soluble on the DeepLoc test set" \
  --notes "Trained on deeploc_our_val_set.fasta (10% stratified hold-out for early stopping), tested on
every third protein of deeploc_test_set.fasta (923 of 2768; make proof tests on all). ± = standard error from 1000 bootstrap resamples (seed 0).
Cytoplasm-Nucleus rows of the training file are left out of the location loss. One seed, demo
settings (finetune/configs/demo.yaml, 4 epochs, LA on 200-residue crops); models are the demo's small exports, not the papers' models.
Paper reference (LA paper, DeepLoc test set, full DeepLoc training set): LA on ProtT5 ~86% Q10,
DeepLoc itself ~78%.

$(cat "$OUT/ss/results.md")" > /dev/null
cat "$OUT/results.md"
