#!/usr/bin/env bash
# data_prep demo: the bundled sample/ -> shards under $DEMO_OUT/data/ (listed in docs/data_prep.md).
# Each command's JSON result goes to $DEMO_OUT/data/results.jsonl; its progress to the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"; DEMO_OUT="${DEMO_OUT:-runs/demo}"
D="$DEMO_OUT/data"; W="$D/work"
mkdir -p "$W"
: > "$D/results.jsonl"
dp() { "$PY" -m data_prep "$@" >> "$D/results.jsonl"; }   # fasta and pssm start a local Ray (2 CPUs) themselves

dp labels deeploc sample/deeploc/deeploc_our_val_set.fasta --out "$D/deeploc_train"
# The demo tests on every third protein of the DeepLoc test set (923 of 2768): embedding and
# evaluating all of them took minutes per model on 2 cores. `make proof` uses the whole set.
awk '/^>/ {n++} n % 3 == 1' sample/deeploc/deeploc_test_set.fasta > "$W/deeploc_test_third.fasta"
dp labels deeploc "$W/deeploc_test_third.fasta" --out "$D/deeploc_test"
dp labels deeploc sample/deeploc/deeploc_test_set.fasta --out "$W/deeploc_test_all"  # for the homology split
dp labels flip sample/flip --splits train,valid --out "$D/ss_train"
dp labels flip sample/flip --splits test --out "$W/flip_test"
dp labels netsurfp sample/netsurfp/CASP12_HHblits.csv sample/netsurfp/TS115_HHblits.csv --out "$W/netsurfp"
dp merge "$W/flip_test" "$W/netsurfp" --out "$D/ss_test"
dp --num-cpus 2 fasta sample/corpus.fasta --dedupe --out "$W/corpus_sequences"
dp --num-cpus 2 pssm sample/pssm --sequences "$W/corpus_sequences" --out "$W/corpus_pssm"
# Training sequences homologous to any evaluation protein are removed (MMseqs2, 30% id, 80% cov).
dp split --train "$W/corpus_pssm" --eval "$W/deeploc_test_all" "$D/ss_test" --out "$D/corpus" --threads 2
echo "data_prep demo outputs:"
for d in corpus deeploc_train deeploc_test ss_train ss_test; do
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'  {sys.argv[2]:14s} kind={m[\"kind\"]:9s} rows={m[\"rows\"]:6d} rejected={m[\"rejected\"]}')" \
    "$D/$d/manifest.json" "$d"
done
