"""FASTA -> tokenized Parquet: Ray Data path vs a single-process Biopython + tokenizers + pyarrow baseline.

    .venv/bin/python bench/bench_fasta.py [--mb 100] [--cpus 2]

Makes a >= 100 MB FASTA by repeating ../shared/data/corpus/corpus_dedup.fasta with unique ids
into a temp dir (not committed), converts it with `data_prep.fasta.convert_fasta` on a local Ray
with --cpus CPUs (Ray start-up excluded), and with the baseline, and prints residues/s, residues/s
per core and the ratio, all from this one run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the baseline is single-process, single-thread
os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def make_input(path: Path, megabytes: int) -> int:
    src = (SHARED / "corpus" / "corpus_dedup.fasta").read_bytes()
    copies = -(-megabytes * 10**6 // len(src))
    with open(path, "wb") as f:
        for k in range(copies):
            f.write(src.replace(b"\n>", b"\n>r%d_" % k).replace(b">", b">r%d_" % k, 1))
    return copies


def baseline(path: Path, out: Path) -> int:
    """Biopython SeqIO + tokenizers + pyarrow, one process: the straightforward way."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from Bio import SeqIO

    from data_prep.vocab import build_tokenizer

    tok = build_tokenizer()
    ids, descs, seqs, tokens, residues = [], [], [], [], 0
    part = 0

    def flush():
        nonlocal ids, descs, seqs, tokens, part
        table = pa.table({"id": ids, "description": descs, "sequence": seqs,
                          "length": pa.array([len(s) for s in seqs], pa.int32()),
                          "tokens": pa.array(tokens, pa.list_(pa.uint8()))})
        pq.write_table(table, out / f"part-{part:05d}.parquet", compression="zstd")
        ids, descs, seqs, tokens, part = [], [], [], [], part + 1

    for rec in SeqIO.parse(str(path), "fasta"):
        s = str(rec.seq).upper()
        ids.append(rec.id)
        descs.append(rec.description.partition(" ")[2])
        seqs.append(s)
        tokens.append(np.asarray(tok.encode(s, add_special_tokens=False).ids, np.uint8))
        residues += len(s)
        if len(ids) == 100_000:
            flush()
    flush()
    return residues


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100, help="input size in MB (>= 100 for the target)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    ap.add_argument("--block-mb", type=int, default=8, help="byte range per Ray task")
    a = ap.parse_args()
    from data_prep.fasta import FastaOptions, convert_fasta
    from data_prep.ray_utils import ensure_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_fasta_"))
    try:
        src = tmp / "big.fasta"
        copies = make_input(src, a.mb)
        size = src.stat().st_size
        print(f"input: {size / 1e6:.1f} MB ({copies} copies of the corpus, unique ids)")
        ensure_ray(a.cpus)
        convert_fasta([str(src)], tmp / "warm", FastaOptions(block_size=a.block_mb << 20))  # warm the workers
        shutil.rmtree(tmp / "warm")
        t = time.perf_counter()
        m = convert_fasta([str(src)], tmp / "ray", FastaOptions(block_size=a.block_mb << 20))
        t_ray = time.perf_counter() - t
        rate = m["residues"] / t_ray
        print(f"data_prep (Ray Data, {a.cpus} CPUs): {m['residues'] / 1e6:.1f} M residues in {t_ray:.2f} s = "
              f"{rate / 1e6:.1f} M residues/s = {rate / a.cpus / 1e6:.1f} M residues/s per core")
        # The same work in this one process, no Ray: what one core does per second.
        from dataclasses import asdict

        from data_prep.fasta import _process_range
        from data_prep.fasta_read import plan_ranges

        (tmp / "one").mkdir()
        opts = asdict(FastaOptions(block_size=a.block_mb << 20))
        t = time.perf_counter()
        for r in plan_ranges([str(src)], a.block_mb << 20):
            _process_range(asdict(r), str(tmp / "one"), opts)
        t_one = time.perf_counter() - t
        print(f"data_prep, same work in 1 process without Ray: {m['residues'] / t_one / 1e6:.1f} M residues/s")
        (tmp / "base").mkdir()
        t = time.perf_counter()
        n = baseline(src, tmp / "base")
        t_base = time.perf_counter() - t
        assert n == m["residues"], (n, m["residues"])
        print(f"baseline (Biopython + tokenizers + pyarrow, 1 process): {t_base:.1f} s = "
              f"{n / t_base / 1e6:.2f} M residues/s")
        print(f"ratio vs baseline (wall time): {t_base / t_ray:.1f}x;  per core: {t_base / (t_ray * a.cpus):.1f}x")
        print(f"target: >= 50 M residues/s per core -> {'MET' if rate / a.cpus >= 50e6 else 'NOT MET'}; "
              f">= 20x baseline -> {'MET' if t_base / t_ray >= 20 else 'NOT MET'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
