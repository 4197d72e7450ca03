"""scripts/proof.sh end to end with tiny settings (PROOF_TINY=1): every stage runs on a small slice
of the bundled sample and docs-style results.md/json come out with every section filled from the
run's own files."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO, SAMPLE


def _head_fasta(src, dst, n):
    records = src.read_text().split(">")[1:n + 1]
    dst.write_text("".join(">" + r for r in records))


def test_proof_script_tiny_end_to_end(tmp_path):
    deeploc = tmp_path / "deeploc"
    deeploc.mkdir()
    # every 10th record: the files are sorted by location, so all classes stay present
    for name, step in (("deeploc_our_val_set.fasta", 6), ("deeploc_test_set.fasta", 20)):
        records = (SAMPLE / "deeploc" / name).read_text().split(">")[1:]
        (deeploc / name).write_text("".join(">" + r for r in records[::step]))
    corpus = tmp_path / "corpus.fasta"
    _head_fasta(SAMPLE / "corpus.fasta", corpus, 400)
    flip = tmp_path / "flip"  # every 5th FLIP record (train, validation and test all present)
    flip.mkdir()
    keep = {r.split()[0] for r in (SAMPLE / "flip" / "sampled.fasta").read_text().split(">")[1::5]}
    for name in ("sequences.fasta", "sampled.fasta", "mask.fasta"):
        records = (SAMPLE / "flip" / name).read_text().split(">")[1:]
        (flip / name).write_text("".join(">" + r for r in records if r.split()[0] in keep))
    out, results = tmp_path / "proof", tmp_path / "docs" / "results"
    # the process-group variables of in-process training tests must not leak into the script's
    # own runs (an inherited MASTER_PORT is still bound by this process: EADDRINUSE)
    inherited = {k: v for k, v in os.environ.items()
                 if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")}
    env = {**inherited, "PROOF_TINY": "1", "PROOF_OUT": str(out), "RESULTS": str(results), "PY": sys.executable,
           "PROOF_DEEPLOC": str(deeploc), "PROOF_CORPUS": str(corpus), "PROOF_FLIP": str(flip), "WANDB_MODE": "offline"}
    run = subprocess.run(["bash", "scripts/proof.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    r = json.loads(results.with_suffix(".json").read_text())
    assert r["tiny"] is True and r["seeds"] == 1
    assert r["layer_choice"]["chosen"] in ("bilstm_sum_012", "bilstm_sum_12")
    assert set(r["layer_choice"]["validation_loss"]) == {"bilstm_sum_012", "bilstm_sum_12"}
    assert r["layer_choice"]["max_dim"] == min(r["layer_choice"]["dim"].values())  # equal widths: either may win
    for emb in ("onehot", "bilstm", "multitask"):
        assert set(r["deeploc"][emb]) == {"la", "mlp", "at", "majority"}, emb
        assert {"cb513", "ts115", "casp12"} <= set(r["ss"][emb]) or {"ts115", "casp12"} <= set(r["ss"][emb]), emb
        la = r["deeploc"][emb]["la"]
        assert 0 <= la["q10"] <= 1 and la["q10_se"] > 0
        for row in r["ss"][emb].values():
            assert 0 < row["q3"] < 1 and row.get("q8") is None  # FLIP has no 8-state labels
    lm = r["lm"]["bilstm"]
    assert math.isfinite(lm["ce"]) and lm["unigram_ce"] > 2.5 and lm["proteins"] > 0
    # the ablation: the main biLSTM against a CE-only one of the same budget, evaluated alike
    pair = r["ablation"]
    assert pair["CE+KL"]["lm"]["ce"] != pair["CE only"]["lm"]["ce"]
    for x in pair.values():
        assert x["ss"] and 0 <= x["mlp"]["q10"] <= 1 and x["steps"] == 4
    # every corpus protein has a profile: the real PSSM or one made by MMseqs2 in the data stage
    assert r["corpus_with_pssm"] == r["corpus_rows"] > 0
    assert r["multitask_heads"]
    # the bundled sample has no CB513: those two targets are "not measured", the others measured
    assert [t["met"] is not None for t in r["targets"]] == [False, True, False, True]
    assert {t["stage"] for t in r["timings"]} >= {"data", "pretrain", "multitask", "evaluate", "ablation"}

    md = results.with_suffix(".md").read_text()
    assert "Tiny settings" in md and "| multitask | la | 1 |" in md and "| onehot | casp12 | 1 |" in md
    assert "Does the PSSM term help?" in md
    assert (out / "finetune" / "compare_ce_kl" / "comparison.md").is_file()
    # a second run finds every stage done and only rewrites the report
    again = subprocess.run(["bash", "scripts/proof.sh", "evaluate", "report"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(results.with_suffix(".json").read_text())["deeploc"] == r["deeploc"]
