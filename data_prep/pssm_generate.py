"""`python -m data_prep pssm generate --fasta F --db DBFASTA --out DIR`: PSSMs with PSI-BLAST.

makeblastdb builds a protein database from DBFASTA; then one `psiblast -num_iterations N
-out_ascii_pssm` per query runs as a Ray task (one thread each). psiblast writes no PSSM for a
query without hits: such queries are counted (reason no_hits) in DIR/manifest.json and listed in
DIR/rejects, never silently lost. PSSMs go to DIR/pssm/<id>.pssm, ready for `data_prep pssm`.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa

from . import shards
from .errors import DataPrepError
from .fasta_parse import parse_block
from .tools import require, run_tool

SAFE_ID = re.compile(r"[A-Za-z0-9_\-|:+=]+")  # the id becomes a file name and ends at the first '.'


def _psiblast_one(psiblast: str, db: str, rid: str, sequence: str, out_dir: str, iterations: int,
                  evalue: float) -> str:
    """Run psiblast for one query; returns "ok", "no_hits" or "psiblast_failed: <message>"."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        query = Path(tmp) / "q.fasta"
        query.write_text(f">{rid}\n{sequence}\n")
        target = Path(out_dir) / f"{rid}.pssm"
        proc = subprocess.run([psiblast, "-query", str(query), "-db", db, "-num_iterations", str(iterations),
                               "-evalue", str(evalue), "-inclusion_ethresh", "0.001", "-num_threads", "1",
                               "-save_pssm_after_last_round", "-out_ascii_pssm", str(target),
                               "-out", str(Path(tmp) / "hits.txt")], capture_output=True, text=True)
        if proc.returncode != 0:
            return "psiblast_failed: " + ((proc.stderr.strip().splitlines() or ["?"])[-1])
        return "ok" if target.is_file() and target.stat().st_size > 0 else "no_hits"


def generate_pssms(fasta: str, db_fasta: str, out: str | Path, iterations: int = 3, evalue: float = 0.001) -> dict:
    psiblast, makeblastdb = require("psiblast"), require("makeblastdb")
    out = Path(out).resolve()
    pssm_dir = out / "pssm"
    shutil.rmtree(pssm_dir, ignore_errors=True)
    pssm_dir.mkdir(parents=True)
    for path in (fasta, db_fasta):
        if not Path(path).is_file():
            raise DataPrepError(f"{path}: no such file")
    db = out / "blastdb" / "db"
    db.parent.mkdir(parents=True, exist_ok=True)
    run_tool([makeblastdb, "-in", str(Path(db_fasta).resolve()), "-dbtype", "prot", "-out", str(db)],
             what=f"{db_fasta}: makeblastdb")

    block = parse_block(Path(fasta).read_bytes(), source=str(fasta))
    rejects = [{"source": str(fasta), **r, "line": r["line"] + 1} for r in block.rejects]
    ids, seqs = block.table["id"].to_pylist(), block.table["sequence"].to_pylist()
    queries = []
    for i, (rid, seq) in enumerate(zip(ids, seqs)):
        base = {"source": str(fasta), "record_index": int(block.record_index[i]), "id": rid,
                "line": int(block.line[i]) + 1}
        if not SAFE_ID.fullmatch(rid):
            rejects.append({**base, "reason": "id_not_a_file_name"})
        else:
            queries.append((base, rid, seq))

    from .ray_utils import ensure_ray

    ray = ensure_ray()
    task = ray.remote(num_cpus=1)(_psiblast_one)
    results = ray.get([task.remote(psiblast, str(db), rid, seq, str(pssm_dir), iterations, evalue)
                       for _, rid, seq in queries])
    written = 0
    for (base, _, _), status in zip(queries, results):
        if status == "ok":
            written += 1
        else:
            rejects.append({**base, "reason": status.split(":")[0]})
            if status.startswith("psiblast_failed"):
                print(f"{fasta}: {base['id']}: {status}")
    shards.write_rejects(pa.Table.from_pylist(rejects, schema=shards.REJECT_SCHEMA), out)
    return shards.write_manifest(
        out, kind="pssm_generate", rows=written, residues=0, sources=[str(fasta), str(db_fasta)],
        rejected=Counter(r["reason"] for r in rejects), input_records=block.n_records,
        pssm_dir=str(pssm_dir), iterations=iterations, evalue=evalue, queries=len(queries))
