"""Builds small real pretraining shards for the pretrain/engine tests.

Sequence shards with joined PSSM columns as docs/contracts.md describes (kind = sequences with
--sequences): the real PSI-BLAST PSSMs of ../shared/data/pssm (parsed with data_prep's parser)
plus corpus proteins that have no PSSM, written with data_prep.shards.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from data_prep.pssm_format import parse_pssm
from data_prep.shards import data_dir, pack_residues, write_manifest, write_table_shards
from data_prep.vocab import encode



def read_fasta(path: Path, limit: int):
    name, seq = None, []
    with open(path) as fh:
        for line in fh:
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(seq)
                    limit -= 1
                    if limit == 0:
                        return
                name, seq = line[1:].split()[0], []
            else:
                seq.append(line.strip().upper())
    if name is not None:
        yield name, "".join(seq)


def build_shards(shared_data: Path, out: Path, *, n_pssm: int = 120, n_plain: int = 240,
                 max_pssm_length: int = 1200, rows_per_shard: int = 100, row_group_rows: int = 25) -> Path:
    """`n_pssm` proteins with PSSMs (sorted file order, length <= max_pssm_length) + `n_plain`
    corpus proteins without; returns the shard directory. Small row groups give the engine's
    planner many chunks to deal to ranks, as a large corpus would."""
    if (out / "manifest.json").is_file():
        return out
    rows = []
    seen = set()
    for f in sorted((shared_data / "pssm").glob("*.pssm")):
        if len(rows) >= n_pssm:
            break
        p = parse_pssm(f.read_bytes())
        if len(p.sequence) > max_pssm_length:
            continue
        seen.add(p.sequence)
        rows.append({"id": f.name.split(".")[0], "sequence": p.sequence, "length": len(p.sequence),
                     "tokens": encode(p.sequence), "pssm": p.percent.reshape(-1), "zero_row": p.zero_row})
    for name, seq in read_fasta(shared_data / "corpus" / "corpus_dedup.fasta", n_plain + 50):
        if seq in seen or len(rows) >= n_pssm + n_plain:
            continue
        rows.append({"id": name, "sequence": seq, "length": len(seq), "tokens": encode(seq),
                     "pssm": None, "zero_row": None})
    table = pa.table({"id": [r["id"] for r in rows], "sequence": [r["sequence"] for r in rows],
                      "length": pa.array([r["length"] for r in rows], pa.int32()),
                      "tokens": pack_residues(r["tokens"] for r in rows),
                      "pssm": pack_residues(r["pssm"] for r in rows),
                      "zero_row": pack_residues(r["zero_row"] for r in rows)})
    write_table_shards(table, data_dir(out), rows_per_shard, row_group_rows=row_group_rows)
    write_manifest(out, kind="sequences", rows=len(rows), residues=int(sum(r["length"] for r in rows)),
                   sources=["shared/data/pssm", "shared/data/corpus/corpus_dedup.fasta"], rejected={},
                   input_records=len(rows), without_pssm=sum(r["pssm"] is None for r in rows))
    return out
