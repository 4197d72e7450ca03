"""`python -m data_prep split --train DIR --eval DIR... --out DIR`: remove homologs of eval proteins.

Every training sequence with an MMseqs2 hit to any evaluation sequence at or above
--min-identity (fraction of identical aligned residues) with --coverage of both sequences is
dropped from the training shards; dropped rows become rejects with reason homolog_of_eval and a
`detail` column naming the eval hit, identity and coverage. Other columns (tokens, pssm, labels)
are kept as they are.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import shards
from .errors import DataPrepError
from .tools import require, run_tool

ROWS_PER_SHARD = 100_000


def _write_fasta(path: Path, seqs: list[str], prefix: str) -> None:
    with open(path, "w") as f:
        for i, s in enumerate(seqs):
            f.write(f">{prefix}{i}\n{s}\n")  # numbered names: ids may contain anything


def homologs(train_seqs: list[str], eval_seqs: list[str], min_identity: float, coverage: float,
             threads: int = 1) -> dict[int, tuple[int, float, float]]:
    """train row -> (eval row, identity, min coverage) of its best qualifying hit (MMseqs2 easy-search)."""
    mmseqs = require("mmseqs")
    with tempfile.TemporaryDirectory(prefix="dp_split_") as tmp:
        t = Path(tmp)
        _write_fasta(t / "train.fasta", train_seqs, "t")
        _write_fasta(t / "eval.fasta", eval_seqs, "e")
        if not train_seqs or not eval_seqs:
            return {}
        run_tool([mmseqs, "easy-search", str(t / "train.fasta"), str(t / "eval.fasta"), str(t / "hits.m8"),
                  str(t / "tmp"), "--min-seq-id", str(min_identity), "-c", str(coverage), "--cov-mode", "0",
                  "--format-output", "query,target,fident,qcov,tcov", "--threads", str(threads), "-v", "1"],
                 what="split: mmseqs easy-search")
        best: dict[int, tuple[int, float, float]] = {}
        for line in (t / "hits.m8").read_text().splitlines():
            q, tgt, fident, qcov, tcov = line.split("\t")
            ident, cov = float(fident), min(float(qcov), float(tcov))
            if ident >= min_identity and cov >= coverage:
                qi = int(q[1:])
                if qi not in best or ident > best[qi][1]:
                    best[qi] = (int(tgt[1:]), ident, cov)
        return best


def split_homologs(train: str | Path, evals: list[str], out: str | Path, min_identity: float = 0.3,
                   coverage: float = 0.8, threads: int = 1) -> dict:
    if not 0 < min_identity <= 1 or not 0 < coverage <= 1:
        raise DataPrepError(f"split: --min-identity and --coverage must be in (0, 1], got {min_identity}, {coverage}")
    require("mmseqs")
    kind = shards.check_schema(train).get("kind", "sequences")
    table = shards.read_table(train)
    eval_ids, eval_seqs, eval_src = [], [], []
    for e in evals:
        shards.check_schema(e)
        t = shards.read_table(e, columns=["id", "sequence"])
        eval_ids += t["id"].to_pylist()
        eval_seqs += t["sequence"].to_pylist()
        eval_src += [str(e)] * t.num_rows
    hits = homologs(table["sequence"].to_pylist(), eval_seqs, min_identity, coverage, threads)
    drop = np.zeros(table.num_rows, bool)
    drop[list(hits)] = True
    ids = table["id"].to_pylist()
    rejects = {"source": [], "record_index": [], "id": [], "line": [], "reason": [], "detail": []}
    by_eval = Counter()
    for qi in sorted(hits):
        ei, ident, cov = hits[qi]
        for k, v in zip(rejects, (str(train), qi, ids[qi], None, "homolog_of_eval",
                                  f"eval_id={eval_ids[ei]} eval_set={eval_src[ei]} identity={ident:.3f} coverage={cov:.3f}")):
            rejects[k].append(v)
        by_eval[eval_src[ei]] += 1
    kept = table.filter(pa.array(~drop))
    shards.write_table_shards(kept, shards.data_dir(out), ROWS_PER_SHARD)
    schema = shards.REJECT_SCHEMA.append(pa.field("detail", pa.string()))
    shards.write_rejects(pa.Table.from_pydict(rejects, schema=schema), out)
    return shards.write_manifest(
        out, kind=kind, rows=kept.num_rows, residues=int(pc.sum(kept["length"]).as_py() or 0),
        sources=[str(train)] + [str(e) for e in evals], rejected=Counter(rejects["reason"]),
        input_records=table.num_rows, dropped=int(drop.sum()), dropped_by_eval_set=dict(by_eval),
        min_identity=min_identity, coverage=coverage, eval_sequences=len(eval_seqs), tool="mmseqs easy-search",
        **({"without_pssm": int(pc.sum(pc.is_null(kept["pssm"])).as_py())} if "pssm" in kept.column_names else {}))
