"""Homology split with MMseqs2 and the CLI surface."""
from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq

from data_prep import shards
from data_prep.fasta import convert_fasta
from data_prep.labels import labels_deeploc
from tests.conftest import REPO


def test_split_drops_a_point_mutated_eval_protein(shared_data, tmp_path, ray_session):
    test_fa = shared_data / "deeploc" / "deeploc_test_set.fasta"
    labels_deeploc([str(test_fa)], tmp_path / "eval")
    ev = shards.read_table(tmp_path / "eval").slice(0, 1).to_pylist()[0]
    seq = ev["sequence"]
    mutant = seq[:10] + ("A" if seq[10] != "A" else "G") + seq[11:]
    corpus = (shared_data / "corpus" / "corpus_dedup.fasta").read_text().split(">")[1:201]
    train = tmp_path / "train.fasta"
    train.write_text("".join(">" + r for r in corpus) + f">copy_of_{ev['id']}\n{seq}\n>mutant_{ev['id']}\n{mutant}\n")
    convert_fasta([str(train)], tmp_path / "train")
    from data_prep.split import split_homologs

    m = split_homologs(tmp_path / "train", [str(tmp_path / "eval")], tmp_path / "out", 0.3, 0.8)
    assert m["input_records"] == 202 and m["rows"] + m["dropped"] == 202
    rej = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    dropped = {r["id"]: r for r in rej}
    assert {f"copy_of_{ev['id']}", f"mutant_{ev['id']}"} <= set(dropped)
    assert all(r["reason"] == "homolog_of_eval" for r in rej)
    assert f"eval_id={ev['id']}" in dropped[f"mutant_{ev['id']}"]["detail"]
    kept = set(shards.read_table(tmp_path / "out", ["id"])["id"].to_pylist())
    assert not kept & set(dropped) and len(kept) == m["rows"]
    assert m["dropped_by_eval_set"][str(tmp_path / "eval")] == m["dropped"]


def test_cli_help_and_missing_tool(tmp_path):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "data_prep", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for cmd in ("fasta", "pssm", "labels", "split", "merge"):
        assert cmd in out.stdout
    # mmseqs missing: one line naming the tool, exit 2
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin" / "python")
    env["PATH"] = str(tmp_path / "bin")
    proc = subprocess.run([sys.executable, "-m", "data_prep", "split", "--train", "x", "--eval", "y", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: mmseqs: not found on PATH; install MMseqs2 (Debian/Ubuntu: apt-get install mmseqs2, " \
        "or conda install -c bioconda mmseqs2)"
    proc = subprocess.run([sys.executable, "-m", "data_prep", "pssm", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("nope: no such file or directory")
