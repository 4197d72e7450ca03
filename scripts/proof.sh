#!/usr/bin/env bash
# Proof run (issue 11): do the models learn representations better than one-hot?
#   bash scripts/proof.sh [STAGE...]   stages: data pretrain multitask choose embed evaluate ablation report
# Trains the CE+KL biLSTM, a CE-only biLSTM and the multitask encoder with the cpu_proof configs
# on the full shared corpus, evaluates frozen embeddings (one-hot, biLSTM, multitask) on the
# DeepLoc and secondary-structure test sets, and writes docs/results.md + docs/results.json.
# About 4 hours on 2 idle cores (stage times in docs/results.md); not part of CI (tests/test_proof.py
# runs it with PROOF_TINY=1).
# Each stage skips what it has already finished, so an interrupted run continues where it stopped;
# PROOF_FRESH=1 starts over.
#
# Environment: SHARED (../shared), PROOF_OUT (runs/proof), RESULTS (docs/results), PY,
# SEEDS (3), PROOF_TINY=1 (bundled sample/, a few steps, 1 seed: the end-to-end test).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"; SHARED="${SHARED:-../shared}"
OUT="${PROOF_OUT:-runs/proof}"; RESULTS="${RESULTS:-docs/results}"; TINY="${PROOF_TINY:-0}"
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_DIR="${WANDB_DIR:-$OUT}" WANDB_SILENT="${WANDB_SILENT:-true}"
# Ray starts its workers at nice 15: on a shared machine the training workers would get a fraction
# of a core while their driver waits. The proof run's workers run at normal priority.
export RAY_worker_niceness="${RAY_worker_niceness:-0}"
D="$OUT/data"; W="$D/work"; M="$OUT/models"; E="$OUT/embeddings"; F="$OUT/finetune"
if [ "$TINY" = 1 ]; then
  SRC=sample; SEEDS="${SEEDS:-1}"
  CORPUS="${PROOF_CORPUS:-$SRC/corpus.fasta}"; PSSMS="${PROOF_PSSMS:-$SRC/pssm}"; JOIN=id
  DEEPLOC="${PROOF_DEEPLOC:-$SRC/deeploc}"; FLIP="${PROOF_FLIP:-$SRC/flip}"
  NETSURFP=("${PROOF_NETSURFP:-$SRC/netsurfp}"/*.csv)
  # a handful of steps per model, everything in-process (no Ray start per command): the pipeline,
  # not the science
  PRETRAIN_SET=(train.max_steps=4 train.checkpoint_every=4 train.log_every=2 --no-ray)
  MULTITASK_SET=(train.max_steps=4 train.checkpoint_every=4 train.log_every=2 train.eval_every=4
                 mixture.proteins_per_epoch=200 eval.limit=20 --no-ray)
  FT_COMMON=(--epochs 2 --local --no-wandb); CNN_SET=(); LOCAL=(--local)
  LA_SET=(--set data.max_length=400 data.max_batch_size=32)  # LA costs dim^2 per residue
  BILSTM_VARIANTS=("sum 0,1,2" "sum 1,2")
  PROFILE_SENSITIVITY="${PROFILE_SENSITIVITY:-1}"
else
  SRC="$SHARED/data"; SEEDS="${SEEDS:-3}"
  CORPUS="$SRC/corpus/corpus_dedup.fasta"; PSSMS="$SRC/pssm"; JOIN=sequence
  DEEPLOC="$SRC/deeploc"; FLIP="$SRC/secondary_structure/flip"; NETSURFP=("$SRC"/secondary_structure/netsurfp/*.csv)
  PRETRAIN_SET=(); MULTITASK_SET=()
  # Embedding and the heads run in-process (--local): on one 2-core machine a Ray start per command
  # (about 30 of them) costs more than it gives, and local embedding is 2-4x faster here. The
  # models themselves train under Ray Train, as users run them.
  LOCAL=(--local); FT_COMMON=(--local)
  # la.yaml / cnn.yaml with less patience and LA on proteins cropped to 1000 residues (first and
  # last 500): 3 seeds x 3 embeddings on 2 cores (LA's convolutions cost dim^2 per residue;
  # one-hot LA's best epochs were 18-43 at patience 30). The CNN's epoch cap is high enough that
  # every embedding stops by patience: at 10, one-hot's best epoch was always the last.
  # bf16: faster epochs on CPUs with AMX: LA 13 vs 27 s per epoch on 256-dimensional biLSTM
  # embeddings, the CNN 23 vs 31 s (same Q3 after one epoch).
  LA_SET=(--set train.patience=20 train.max_epochs=100 data.max_length=1000 deepspeed.bf16=true)
  CNN_SET=(--set train.patience=2 train.max_epochs=30 deepspeed.bf16=true)
  BILSTM_VARIANTS=("sum 0,1,2" "sum 1,2" "concat 0,1,2")
  PROFILE_SENSITIVITY="${PROFILE_SENSITIVITY:-5.7}"
fi
[ "${PROOF_FRESH:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT"
say() { echo "[proof $(date +%H:%M:%S)] $*"; }
done_in() { [ -f "$1" ]; }   # a stage's last output exists: skip it
dp() { "$PY" -m data_prep "$@"; }
json_get() {  # FILE PYTHON-EXPRESSION-OF-d: one value of a JSON file
  "$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"
}

stage_data() {
  done_in "$D/corpus/manifest.json" && { say "data: done"; return; }
  mkdir -p "$W"
  profiles
  dp labels deeploc "$DEEPLOC/deeploc_our_val_set.fasta" --out "$D/deeploc_train"
  dp labels deeploc "$DEEPLOC/deeploc_test_set.fasta" --out "$D/deeploc_test"
  dp labels flip "$FLIP" --splits train,valid --out "$D/ss_train"
  dp labels flip "$FLIP" --splits test --out "$W/flip_test"
  dp labels netsurfp "${NETSURFP[@]}" --out "$W/netsurfp"
  dp merge "$W/flip_test" "$W/netsurfp" --out "$D/ss_test"
  dp --num-cpus 2 fasta "$CORPUS" --dedupe --out "$W/corpus_sequences"
  # Real PSSMs first (the first file for a sequence wins), then the generated profiles for the rest.
  # The shared PSSM files are named by accession, the corpus rows by source: join on residues.
  dp --num-cpus 2 pssm "$PSSMS" "$W/profiles/pssm" --sequences "$W/corpus_sequences" --join-on "$JOIN" \
    --out "$W/corpus_pssm"
  # Corpus proteins homologous to any test protein are removed (MMseqs2, 30% identity, 80% cover).
  dp split --train "$W/corpus_pssm" --eval "$D/deeploc_test" "$D/ss_test" --out "$D/corpus" --threads 2
  say "data: $(cat "$D/corpus/manifest.json" | tr -d '\n' | head -c 300)"
}


# Only about 600 corpus proteins have a real PSSM, too few for the KL term to matter: MMseqs2
# profiles for the whole corpus against itself (issue 14's engine; at -s 5.7, 24 CPU-minutes for
# the 44k proteins, 16 min on 2 cores, 15x less CPU per query than psiblast: docs/benchmarks.md).
profiles() {
  done_in "$W/profiles/manifest.json" && return
  dp --num-cpus 2 pssm generate --engine mmseqs --fasta "$CORPUS" --db "$CORPUS" --out "$W/profiles" \
    --sensitivity "$PROFILE_SENSITIVITY" --chunk-size "${PROFILE_CHUNK:-2000}"
}

# One pretraining run: train (a run directory that exists is resumed), then export.
pretrain_run() {  # NAME [overrides...] [--export-layers L --export-combine C]
  local name=$1 export=(); shift
  local sets=()
  while [ $# -gt 0 ]; do
    case $1 in
      --export-layers) export+=(--layers "$2"); shift 2 ;;
      --export-combine) export+=(--combine "$2"); shift 2 ;;
      *) sets+=("$1"); shift ;;
    esac
  done
  done_in "$M/$name/config.json" && { say "pretrain $name: done"; return; }
  "$PY" -m pretrain train --config pretrain/configs/cpu_proof.yaml --data "$D/corpus" \
    --set "ray.storage_path=$OUT/ray" "ray.name=$name" ${sets[@]+"${sets[@]}"} ${PRETRAIN_SET[@]+"${PRETRAIN_SET[@]}"}
  "$PY" -m pretrain export --run "$OUT/ray/$name" --out "$M/$name" ${export[@]+"${export[@]}"}
}

stage_pretrain() { pretrain_run bilstm; }

stage_multitask() {
  done_in "$M/multitask/config.json" && { say "multitask: done"; return; }
  # train, then the final whole-protein evaluation of its own heads (eval.json in the run dir)
  "$PY" -m multitask train --config multitask/configs/cpu_proof.yaml --set \
    "mixture.sources=[{path: $D/corpus, weight: 0.35}, {path: $D/ss_train, weight: 0.5}, {path: $D/deeploc_train, weight: 0.15}]" \
    "eval.ss_test=$D/ss_test" "eval.deeploc_test=$D/deeploc_test" "ray.storage_path=$OUT/ray" ray.name=multitask \
    ${MULTITASK_SET[@]+"${MULTITASK_SET[@]}"} --export "$M/multitask"
}

ft() { "$PY" -m finetune "$@"; }
embed() {  # MODEL NAME SHARD...
  local model=$1 name=$2; shift 2
  for shard in "$@"; do
    done_in "$E/$name/$shard/manifest.json" && continue
    ft embed --model "$model" --data "$D/$shard" --out "$E/$name/$shard" --config finetune/configs/demo.yaml \
      ${LOCAL[@]+"${LOCAL[@]}"}
  done
}
ss_cnn() {  # NAME OUTDIR SEEDS [--set ...]: the SeqVec CNN on frozen per-residue embeddings
  local name=$1 dir=$2 seeds=$3; shift 3
  done_in "$dir/complete" && return   # results.json alone may hold the seeds of an interrupted run
  ft ss --config finetune/configs/cnn.yaml --name "$name" --group proof --seeds "$seeds" \
    --train "$E/$name/ss_train" --test "$E/$name/ss_test" --out "$dir" ${CNN_SET[@]+"${CNN_SET[@]}"} "$@" \
    ${FT_COMMON[@]+"${FT_COMMON[@]}"} \
    2>&1 | tee "$dir.log"
  touch "$dir/complete"
}

# How the biLSTM's layers combine (BILSTM_VARIANTS) is chosen on validation data, never on a test
# set: one CNN seed per variant on FLIP train, the lowest validation loss (FLIP's validation split)
# wins among the variants no wider than CHOOSE_MAX_DIM (default: the narrowest variant's width).
# Wider ones (the concatenation: 3x the dimensions) are measured and reported, not chosen: LA's
# convolutions cost dim^2 per residue, 9x for 768 dimensions against 256, which 3 seeds on 2 cores
# cannot afford, and the one-hot and multitask embeddings they are compared with are narrower still.
stage_choose() {
  done_in "$F/bilstm_choice.json" && { say "choose: $(cat "$F/bilstm_choice.json")"; return; }
  mkdir -p "$F/choose"
  for v in "${BILSTM_VARIANTS[@]}"; do
    read -r combine layers <<< "$v"; local name="bilstm_${combine}_${layers//,/}"
    done_in "$M/$name/config.json" || \
      "$PY" -m pretrain export --run "$OUT/ray/bilstm" --out "$M/$name" --layers "$layers" --combine "$combine"
    embed "$M/$name" "$name" ss_train
    embed "$M/$name" "$name" ss_test
    ss_cnn "$name" "$F/choose/$name" 0 --set train.max_epochs="${CHOOSE_EPOCHS:-2}"
  done
  "$PY" - "$F/choose" "$E" "$F/bilstm_choice.json" "${CHOOSE_MAX_DIM:-0}" <<'PYEOF'
import json, sys
from pathlib import Path
choose, emb, out, max_dim = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
loss, dim = {}, {}
for f in sorted(choose.glob("*/results.json")):
    rows = json.loads(f.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    loss[f.parent.name] = min(r["best_val_loss"] for r in rows if r.get("best_val_loss") is not None)
    dim[f.parent.name] = json.loads((emb / f.parent.name / "ss_train" / "manifest.json").read_text())["dim"]
max_dim = max_dim or min(dim.values())
best = min((v for v in loss if dim[v] <= max_dim), key=loss.get)
out.write_text(json.dumps({"chosen": best, "validation_loss": loss, "dim": dim, "max_dim": max_dim}, indent=2) + "\n")
print(f"[proof] biLSTM layers: {best}, the lowest FLIP validation loss of the variants of at most {max_dim} "
      f"dimensions (per variant: {loss}; dimensions {dim})")
PYEOF
}

# The embeddings compared: one-hot, the chosen biLSTM variant, the multitask encoder
# (PROOF_ONLY="onehot ..." restricts the embed and evaluate stages to some of them).
embedders() {
  local all=(onehot "$(json_get "$F/bilstm_choice.json" 'd["chosen"]')" multitask)
  [ -n "${PROOF_ONLY:-}" ] && all=($PROOF_ONLY)
  echo "${all[@]}"
}

stage_embed() {
  for name in $(embedders); do
    embed "$([ "$name" = onehot ] && echo onehot || echo "$M/$name")" "$name" deeploc_train deeploc_test ss_train ss_test
  done
}

deeploc() {  # NAME OUTDIR METHODS [finetune flags...]
  local name=$1 dir=$2 methods=$3; shift 3
  done_in "$dir/complete" && return
  ft deeploc --config finetune/configs/la.yaml --name "$name" --group proof --methods "$methods" \
    --train "$E/$name/deeploc_train" --test "$E/$name/deeploc_test" --out "$dir" "$@" \
    ${FT_COMMON[@]+"${FT_COMMON[@]}"} 2>&1 | tee "$dir.log"
  touch "$dir/complete"
}

# Cheap heads first (CNN, MLP, annotation transfer, majority), light attention last: its
# convolutions cost dim^2 per residue, and it writes its results after every seed.
stage_evaluate() {
  local seeds; seeds=$(seq -s, 0 $((SEEDS - 1)))
  mkdir -p "$F/deeploc" "$F/deeploc_la" "$F/ss"
  for name in $(embedders); do
    ss_cnn "$name" "$F/ss/$name" "$seeds"
    deeploc "$name" "$F/deeploc/$name" mlp,at,majority --seeds "$seeds"
  done
  [ -n "${PROOF_ONLY:-}" ] || done_in "$F/lm_bilstm.json" || \
    "$PY" -m pretrain eval --model "$M/bilstm" --data "$D/deeploc_test" --train "$D/corpus" --out "$F/lm_bilstm.json"
  for name in $(embedders); do
    deeploc "$name" "$F/deeploc_la/$name" la --seeds "$seeds" ${LA_SET[@]+"${LA_SET[@]}"}
    say "evaluate $name: $(grep -h 'la seed.*Q10' "$F/deeploc_la/$name.log" | tail -1)"
  done
}

# PEvoLM's question, does the PSSM term help? The main biLSTM (CE+KL) against a CE-only biLSTM with
# the same config, data, seed and steps, evaluated the same way: held-out CE, the CNN on secondary
# structure with the chosen layers (seed 0), the MLP on DeepLoc; their curves go side by side (ops.compare).
stage_ablation() {
  local chosen combine layers seeds
  seeds=$(seq -s, 0 $((SEEDS - 1)))
  chosen=$(json_get "$F/bilstm_choice.json" 'd["chosen"]')
  combine=$(json_get "$M/$chosen/config.json" 'd["embedding"]["combine"]')
  layers=$(json_get "$M/$chosen/config.json" '",".join(map(str, d["embedding"]["layers"]))')
  pretrain_run ablation_ce model.pssm_head=false loss.w_ce=1.0 loss.w_kl=0.0 \
    "wandb.tags=[proof,bilstm,ablation,ce-only]" --export-layers "$layers" --export-combine "$combine"
  done_in "$F/lm_ablation_ce.json" || \
    "$PY" -m pretrain eval --model "$M/ablation_ce" --data "$D/deeploc_test" --train "$D/corpus" --out "$F/lm_ablation_ce.json"
  embed "$M/ablation_ce" ablation_ce ss_train ss_test deeploc_train deeploc_test
  ss_cnn ablation_ce "$F/ss/ablation_ce" 0
  deeploc ablation_ce "$F/deeploc/ablation_ce" mlp --seeds "$seeds"
  "$PY" -m ops.compare "$OUT/ray/bilstm" "$OUT/ray/ablation_ce" --out "$F/compare_ce_kl" --metrics ce,perplexity
}

stage_report() {
  "$PY" scripts/proof_report.py --proof "$OUT" --out "$RESULTS" --seeds "$SEEDS" $([ "$TINY" = 1 ] && echo --tiny)
}

stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(data pretrain multitask choose embed evaluate ablation report)
for s in "${stages[@]}"; do
  say "stage $s"
  start=$(date +%s)
  "stage_$s"
  echo "{\"stage\": \"$s\", \"seconds\": $(( $(date +%s) - start ))}" >> "$OUT/timings.jsonl"
done
