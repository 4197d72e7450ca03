"""`python -m data_prep pssm generate --fasta F --db DBFASTA --out DIR [--engine psiblast|mmseqs]`.

Both engines write one PSI-BLAST-layout ASCII PSSM per query to DIR/pssm/<id>.pssm, ready for
`data_prep pssm` (which turns them into kind "pssm" shards), and the same accounting:
a query without hits gets no file and is a `no_hits` reject in DIR/rejects (its count is also
the manifest's `without_pssm`); ids that cannot be file names are `id_not_a_file_name` rejects.
Nothing is silently lost.

* psiblast: makeblastdb on DBFASTA, then one `psiblast -num_iterations N -out_ascii_pssm` per
  query as a Ray task (one thread each).
* mmseqs: the target DB is built once, queries go in chunks, one Ray task per chunk runs a
  batched iterative search; the percentages come from the alignments (`profiles_mmseqs`,
  `profiles_msa`, docs/data_prep.md).

Progress (queries done, rate, ETA) goes to stderr; stdout stays for the CLI's JSON result.
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from . import shards
from .errors import DataPrepError
from .fasta_parse import parse_block
from .profiles_mmseqs import MmseqsOptions
from .tools import child_cpu_seconds, require, run_tool

log = logging.getLogger(__name__)
SAFE_ID = re.compile(r"[A-Za-z0-9_\-|:+=]+")  # the id becomes a file name and ends at the first '.'
ENGINES = ("psiblast", "mmseqs")
PSIBLAST_EVALUE = 0.001


def _psiblast_one(psiblast: str, db: str, rid: str, sequence: str, out_dir: str, iterations: int,
                  evalue: float) -> tuple[str, float]:
    """Run psiblast for one query; returns ("ok" | "no_hits" | "psiblast_failed: <message>", CPU s)."""
    cpu = child_cpu_seconds()
    return _psiblast_status(psiblast, db, rid, sequence, out_dir, iterations, evalue), child_cpu_seconds() - cpu


def _psiblast_status(psiblast, db, rid, sequence, out_dir, iterations, evalue) -> str:
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


def gather_with_progress(ray, refs: list, sizes: list[int], what: str) -> list:
    """ray.get(refs) in order, with a tqdm bar on stderr counting queries (`sizes` per ref)."""
    from tqdm import tqdm

    results, size_of = {}, dict(zip(refs, sizes))
    pending = list(refs)
    with tqdm(total=sum(sizes), desc=what, unit="query", file=sys.stderr, mininterval=2.0) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=30.0)
            for ref in done:
                results[ref] = ray.get(ref)
                bar.update(size_of[ref])
    return [results[r] for r in refs]


def read_queries(fasta: str) -> tuple[list[tuple[dict, str, str]], list[dict], int]:
    """(base reject row, id, sequence) per usable query in input order; rejects; input records."""
    if not Path(fasta).is_file():
        raise DataPrepError(f"{fasta}: no such file")
    block = parse_block(Path(fasta).read_bytes(), source=str(fasta))
    rejects = [{"source": str(fasta), **r, "line": r["line"] + 1} for r in block.rejects]
    ids, seqs = block.table["id"].to_pylist(), block.table["sequence"].to_pylist()
    queries, seen = [], set()
    for i, (rid, seq) in enumerate(zip(ids, seqs)):
        base = {"source": str(fasta), "record_index": int(block.record_index[i]), "id": rid,
                "line": int(block.line[i]) + 1}
        if not SAFE_ID.fullmatch(rid):
            rejects.append({**base, "reason": "id_not_a_file_name"})
        elif rid in seen:  # one file per id: a second query would overwrite the first one's PSSM
            rejects.append({**base, "reason": "duplicate_id"})
        else:
            seen.add(rid)
            queries.append((base, rid, seq))
    return queries, rejects, block.n_records


def _run_psiblast(queries, db_fasta: str, out: Path, pssm_dir: Path, iterations: int, evalue: float,
                  target_db: str | None) -> tuple[list[str], float]:
    psiblast, makeblastdb = require("psiblast"), require("makeblastdb")
    if target_db:
        db = Path(target_db).resolve()
    else:
        db = out / "blastdb" / "db"
        db.parent.mkdir(parents=True, exist_ok=True)
        run_tool([makeblastdb, "-in", str(Path(db_fasta).resolve()), "-dbtype", "prot", "-out", str(db)],
                 what=f"{db_fasta}: makeblastdb")
    from .ray_utils import ensure_ray

    ray = ensure_ray()
    task = ray.remote(num_cpus=1)(_psiblast_one)
    refs = [task.remote(psiblast, str(db), rid, seq, str(pssm_dir), iterations, evalue) for _, rid, seq in queries]
    done = gather_with_progress(ray, refs, [1] * len(refs), "psiblast")
    return [status for status, _ in done], sum(cpu for _, cpu in done)


def _run_mmseqs(queries, db_fasta: str, out: Path, pssm_dir: Path, opts: MmseqsOptions,
                target_db: str | None) -> tuple[list[str], float]:
    from .profiles_mmseqs import build_target, chunks, search_chunk
    from .ray_utils import ensure_ray

    opts.check()
    mmseqs = require("mmseqs")
    if target_db:
        target = str(Path(target_db).resolve())
    else:
        t0 = time.time()
        target = build_target(mmseqs, db_fasta, out / "mmseqs_target", opts.threads)
        log.info("mmseqs target DB %s built in %.0f s", target, time.time() - t0)
    ray = ensure_ray()
    task = ray.remote(num_cpus=opts.threads)(search_chunk)
    parts = chunks([(rid, seq) for _, rid, seq in queries], opts.chunk_size)
    refs = [task.remote(part, target, str(pssm_dir), opts) for part in parts]
    done = gather_with_progress(ray, refs, [len(p) for p in parts], "mmseqs")
    return [status for statuses, _ in done for status in statuses], sum(cpu for _, cpu in done)


def _check_target_db(engine: str, target_db: str) -> None:
    if engine == "psiblast" and not any(Path(target_db).parent.glob(Path(target_db).name + ".p[ai][ln]")):
        raise DataPrepError(f"{target_db}: --target-db is not a BLAST protein DB (no {target_db}.pin or .pal)")
    if engine == "mmseqs" and not Path(f"{target_db}.index").is_file():
        raise DataPrepError(f"{target_db}: --target-db is not an mmseqs DB (no {target_db}.index)")


def generate_pssms(fasta: str, db_fasta: str | None, out: str | Path, iterations: int = 3,
                   evalue: float | None = None, engine: str = "psiblast", mmseqs: MmseqsOptions | None = None,
                   target_db: str | None = None) -> dict:
    if engine not in ENGINES:
        raise DataPrepError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")
    for tool in ("psiblast", "makeblastdb") if engine == "psiblast" else ("mmseqs",):
        require(tool)  # before any file is read: a missing tool is the first thing to fix
    out = Path(out).resolve()
    pssm_dir = out / "pssm"
    if not target_db and not (db_fasta and Path(db_fasta).is_file()):
        raise DataPrepError(f"{db_fasta}: no such file" if db_fasta else "--db or --target-db is needed")
    if engine == "mmseqs":
        (mmseqs or MmseqsOptions()).check()
    if target_db:
        _check_target_db(engine, target_db)
    queries, rejects, n_records = read_queries(fasta)
    shutil.rmtree(pssm_dir, ignore_errors=True)
    pssm_dir.mkdir(parents=True)
    t0 = time.time()
    log.info("%s: %d queries against %s", engine, len(queries), target_db or db_fasta)
    if engine == "psiblast":
        evalue = PSIBLAST_EVALUE if evalue is None else evalue
        results, cpu = _run_psiblast(queries, db_fasta, out, pssm_dir, iterations, evalue, target_db)
        settings = {}
    else:
        opts = replace(mmseqs or MmseqsOptions(), iterations=iterations)
        opts.evalue = opts.evalue if evalue is None else evalue
        evalue = opts.evalue
        results, cpu = _run_mmseqs(queries, db_fasta, out, pssm_dir, opts, target_db)
        settings = {"e_profile": opts.e_profile, "sensitivity": opts.sensitivity, "max_seqs": opts.max_seqs,
                    "chunk_size": opts.chunk_size, "threads_per_task": opts.threads,
                    "low_complexity_masking": opts.low_complexity}
    seconds = time.time() - t0
    written, residues, failures = 0, 0, Counter()
    for (base, _, seq), status in zip(queries, results):
        if status == "ok":
            written += 1
            residues += len(seq)
        else:
            rejects.append({**base, "reason": status.split(":")[0]})
            if "failed" in status:
                failures[status] += 1
    for status, count in failures.items():  # a failed mmseqs chunk fails all its queries: one line each
        log.error("%s: %d queries: %s", fasta, count, status)
    rejects.sort(key=lambda r: (r["record_index"], r["reason"]))  # input order, whatever the engine
    shards.write_rejects(pa.Table.from_pylist(rejects, schema=shards.REJECT_SCHEMA), out)
    rejected = Counter(r["reason"] for r in rejects)
    log.info("%s: %d PSSMs, %d without hits, %.1f queries/s", engine, written, rejected["no_hits"],
             len(queries) / max(seconds, 1e-9))
    return shards.write_manifest(
        out, kind="pssm_generate", rows=written, residues=residues, sources=[str(fasta), str(target_db or db_fasta)],
        rejected=rejected, input_records=n_records, pssm_dir=str(pssm_dir), engine=engine,
        iterations=iterations, evalue=evalue, queries=len(queries), without_pssm=rejected["no_hits"],
        seconds=round(seconds, 2), search_cpu_s=round(cpu, 2), **settings)
