"""PSSMs with MMseqs2: chunks of queries, each a Ray task running one batched iterative search.

The target DB is built once (`mmseqs createdb` + `createindex`) in a directory every node can
read (by default OUT/mmseqs_target; on a cluster put OUT, or --target-db, on shared storage).
Each task writes its chunk as a query DB in a node-local temporary directory, runs
`mmseqs search --num-iterations N -s S`, then `result2msa` (aligned FASTA, query columns
only), and turns each query's MSA into weighted observed percentages (`profiles_msa`), written as
OUT/pssm/<id>.pssm in the PSI-BLAST ASCII layout. Queries are renamed q<index> inside a chunk
and mapped back through the query DB's .lookup file, so ids and order never depend on how
mmseqs parses headers or orders its DB.
"""
from __future__ import annotations

import logging
import mmap
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataPrepError
from .tools import child_cpu_seconds, require, run_tool

log = logging.getLogger(__name__)


@dataclass
class MmseqsOptions:
    iterations: int = 3
    sensitivity: float = 7.5       # mmseqs -s: 1 fast .. 7.5 sensitive
    evalue: float = 0.01           # -e: hits kept in the final alignments, and so in the MSA
    e_profile: float = 0.1         # --e-profile: hits that shape the next iteration's profile
    max_seqs: int = 1000           # prefilter hits per query and iteration (psiblast keeps 500)
    threads: int = 1               # per Ray task (the task reserves as many Ray CPUs)
    chunk_size: int = 1000         # queries per task: bigger batches amortise the index scan
    split_memory_limit: str = ""   # mmseqs --split-memory-limit, e.g. "4G" on small nodes
    # mmseqs masks low-complexity k-mers and corrects compositional bias by default; psiblast
    # does neither by default, and turning both off brought the profiles closer (docs/benchmarks.md)
    low_complexity: bool = False

    def check(self) -> None:
        if not 1 <= self.iterations <= 10:
            raise DataPrepError(f"--iterations: {self.iterations} is not in 1..10")
        if not 1.0 <= self.sensitivity <= 7.5:
            raise DataPrepError(f"--sensitivity: {self.sensitivity} is not in 1.0..7.5")
        if self.threads < 1 or self.chunk_size < 1 or self.max_seqs < 1:
            raise DataPrepError("--threads, --chunk-size and --max-seqs must be >= 1")
        if not (self.evalue > 0 and self.e_profile > 0):
            raise DataPrepError("--evalue and --e-profile must be > 0")


def build_target(mmseqs: str, db_fasta: str, target_dir: Path, threads: int) -> str:
    """createdb + createindex once; returns the DB prefix."""
    target_dir.mkdir(parents=True, exist_ok=True)
    prefix = target_dir / "target"
    run_tool([mmseqs, "createdb", str(Path(db_fasta).resolve()), str(prefix), "-v", "1"],
             what=f"{db_fasta}: mmseqs createdb")
    with tempfile.TemporaryDirectory(prefix="mmseqs_index_") as tmp:
        run_tool([mmseqs, "createindex", str(prefix), tmp, "--threads", str(threads), "-v", "1"],
                 what=f"{db_fasta}: mmseqs createindex")
    return str(prefix)


class MmseqsDB:
    """An mmseqs DB (data file + .index: key, offset, length incl. the trailing NUL), memory-mapped:
    a chunk's MSAs can be GBs, and one entry at a time is all the conversion needs."""

    def __init__(self, prefix: Path):
        self.where = {}
        for line in Path(f"{prefix}.index").read_text().splitlines():
            key, offset, length = (int(x) for x in line.split("\t"))
            self.where[key] = (offset, length)
        self._file = open(prefix, "rb")
        size = Path(prefix).stat().st_size
        self._data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def __getitem__(self, key: int) -> bytes:
        offset, length = self.where[key]
        return bytes(self._data[offset:offset + length]).rstrip(b"\0")

    def close(self) -> None:
        if self._data:
            self._data.close()
        self._file.close()


def search_chunk(queries: list[tuple[str, str]], target: str, pssm_dir: str,
                 opts: MmseqsOptions) -> tuple[list[str], float]:
    """Ray task body: PSSM files for one chunk; returns per query "ok", "no_hits" or
    "mmseqs_failed: ...", and the CPU seconds mmseqs used."""
    cpu = child_cpu_seconds()
    status = _search(queries, target, pssm_dir, opts)
    return status, child_cpu_seconds() - cpu


def _search(queries: list[tuple[str, str]], target: str, pssm_dir: str, opts: MmseqsOptions) -> list[str]:
    from .profiles_msa import msa_percent, write_ascii_pssm

    mmseqs = require("mmseqs")
    with tempfile.TemporaryDirectory(prefix="mmseqs_chunk_") as tmp:
        t = Path(tmp)
        (t / "q.fasta").write_text("".join(f">q{i}\n{seq}\n" for i, (_, seq) in enumerate(queries)))
        common = ["--threads", str(opts.threads), "-v", "1"]
        search = [mmseqs, "search", str(t / "qdb"), target, str(t / "res"), str(t / "tmp"),
                  "--num-iterations", str(opts.iterations), "-s", str(opts.sensitivity),
                  "-e", str(opts.evalue), "--e-profile", str(opts.e_profile), "--max-seqs", str(opts.max_seqs)]
        if opts.split_memory_limit:
            search += ["--split-memory-limit", opts.split_memory_limit]
        if not opts.low_complexity:
            search += ["--mask", "0", "--comp-bias-corr", "0"]
        steps = [[mmseqs, "createdb", str(t / "q.fasta"), str(t / "qdb"), "-v", "1"], search + common,
                 [mmseqs, "result2msa", str(t / "qdb"), target, str(t / "res"), str(t / "msa"),
                  "--msa-format-mode", "2"] + common]
        for args in steps:
            proc = subprocess.run(args, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
                return [f"mmseqs_failed: mmseqs {args[1]} exited with {proc.returncode}: {last}"] * len(queries)
        key_to_index = {}
        for line in (t / "qdb.lookup").read_text().splitlines():
            key, name = line.split("\t")[:2]
            key_to_index[int(key)] = int(name[1:])
        results, msas = MmseqsDB(t / "res"), MmseqsDB(t / "msa")
        hits = {key_to_index[k] for k, (_, length) in results.where.items() if length > 1}  # not just the NUL
        msa_key = {key_to_index[k]: k for k in msas.where}
        status = []
        try:
            for i, (rid, seq) in enumerate(queries):
                if i not in hits:
                    status.append("no_hits")
                    continue
                where = f"{rid}: mmseqs result2msa entry"
                query, percent = msa_percent(msas[msa_key[i]], where)
                if len(query) != len(seq):
                    raise DataPrepError(f"{where}: query row has {len(query)} residues, the input {len(seq)}")
                write_ascii_pssm(Path(pssm_dir) / f"{rid}.pssm", seq, percent)
                status.append("ok")
        finally:
            results.close()
            msas.close()
        return status


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
