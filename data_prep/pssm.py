"""`python -m data_prep pssm IN... --out DIR [--sequences SEQDIR]`: ASCII PSSMs -> kind "pssm" shards.

Files are parsed in parallel (Ray Data, batches of files per task) by the vectorised parser in
`pssm_format`. The PSSM id is the file name up to the first '.'; gzip-compressed files are read
transparently. Every file is one input record: written, or rejected with the parser's reason.

With --sequences, the rows of the sequence shards are written with the PSSM columns attached
(null and counted as "without_pssm" where there is none); a PSSM is then a reject when its
residues differ from the sequence (residue_mismatch) or no sequence has its id (no_sequence).
`--join-on sequence` matches by the residues instead of the id, for PSSM files named by accession
beside sequences named otherwise (a PSSM then attaches to every row with exactly its residues).
Accounting in that mode: input records = sequence rows + PSSM files not attached.
"""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import shards
from .errors import DataPrepError
from .pssm_format import PssmFormatError, parse_pssm

ROWS_PER_SHARD = 20_000
FILES_PER_TASK = 64
# pssm: L*20 uint8 percentages (row-major, PSI-BLAST column order); zero_row: L bytes 0/1.
PARSED_SCHEMA = pa.schema([
    ("index", pa.int64()), ("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()),
    ("pssm", pa.binary()), ("zero_row", pa.binary()),
    ("reason", pa.string()), ("line", pa.int64()), ("detail", pa.string()),
])
PSSM_COLUMNS = ["pssm", "zero_row"]


def pssm_id(path: str | Path) -> str:
    return Path(path).name.split(".", 1)[0]


def list_inputs(inputs: list[str]) -> list[str]:
    """Files as given; a directory contributes its files in name order."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(str(f) for f in p.iterdir() if f.is_file())
        elif p.is_file():
            files.append(str(p))
        else:
            raise DataPrepError(f"{item}: no such file or directory")
    return files


def parse_files(batch: dict) -> pa.Table:
    """Ray Data batch function: {"index", "path"} -> PARSED_SCHEMA rows (reason set for rejects)."""
    out = {name: [] for name in PARSED_SCHEMA.names}
    for index, path in zip(batch["index"], batch["path"]):
        row = {"index": int(index), "id": pssm_id(path), "sequence": None, "length": None, "pssm": None,
               "zero_row": None, "reason": None, "line": None, "detail": None}
        try:
            raw = Path(path).read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            p = parse_pssm(raw)
            row.update(sequence=p.sequence, length=len(p.sequence),
                       pssm=p.percent.astype(np.uint8).tobytes(), zero_row=p.zero_row.astype(np.uint8).tobytes())
        except PssmFormatError as err:
            row.update(reason=err.reason, line=err.line, detail=str(err))
        except (OSError, EOFError, UnicodeDecodeError) as err:
            row.update(reason="unreadable", detail=str(err))
        for k, v in row.items():
            out[k].append(v)
    return pa.Table.from_arrays([pa.array(out[f.name], f.type) for f in PARSED_SCHEMA], schema=PARSED_SCHEMA)


def parse_all(files: list[str]) -> pa.Table:
    from .ray_utils import ensure_ray, use_all_cpus

    ray = ensure_ray()
    items = [{"index": i, "path": str(Path(f).resolve())} for i, f in enumerate(files)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // FILES_PER_TASK)))
    ds = use_all_cpus(ds.map_batches(parse_files, batch_size=FILES_PER_TASK, batch_format="numpy"))
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(tables) if tables else PARSED_SCHEMA.empty_table()
    return table.sort_by("index")


def _reject_rows(table: pa.Table, files: list[str], reason=None) -> list[dict]:
    rows = []
    for r in table.select(["index", "id", "line", "reason"]).to_pylist():
        rows.append({"source": files[r["index"]], "record_index": 0, "id": r["id"], "line": r["line"],
                     "reason": reason or r["reason"]})
    return rows


def convert_pssm(inputs: list[str], out: str | Path, sequences: str | Path | None = None,
                 join_on: str = "id") -> dict:
    if join_on not in ("id", "sequence"):
        raise DataPrepError(f"pssm: --join-on must be 'id' or 'sequence', not {join_on!r}")
    files = list_inputs(inputs)
    if not files:
        raise DataPrepError("pssm: no input files")
    parsed = parse_all(files)
    bad = pc.is_valid(parsed["reason"])
    rejects = _reject_rows(parsed.filter(bad), files)
    good = parsed.filter(pc.invert(bad))
    # Duplicate ids: the first file (input order) wins.
    ids = good["id"].to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), bool)
    dup[first] = False
    rejects += _reject_rows(good.filter(pa.array(dup)), files, "duplicate_id")
    good = good.filter(pa.array(~dup))
    if sequences is None:
        table = good.select(["id", "sequence", "length", "pssm", "zero_row"])
        shards.write_table_shards(table, shards.data_dir(out), ROWS_PER_SHARD)
        shards.write_rejects(rejects, out)
        return shards.write_manifest(
            out, kind="pssm", rows=table.num_rows, residues=int(pc.sum(table["length"]).as_py() or 0),
            sources=files, rejected=Counter(r["reason"] for r in rejects), input_records=len(files),
            zero_rows=int(shards.residue_arrays(table["zero_row"], np.uint8)[0].sum()),
            column_order="ARNDCQEGHILKMFPSTWYV")
    return _join(good, rejects, files, sequences, out, join_on)


def _join(good: pa.Table, rejects: list[dict], files: list[str], seqdir, out, join_on: str) -> dict:
    shards.check_schema(seqdir)
    seq = shards.read_table(seqdir)
    if "tokens" not in seq.column_names:
        raise DataPrepError(f"{seqdir}: not a sequence shard directory (no tokens column)")
    seq = seq.drop_columns([c for c in PSSM_COLUMNS if c in seq.column_names])
    seq_strings = seq["sequence"].to_pylist()
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(seq[join_on].to_pylist()):
        rows_of.setdefault(key, []).append(i)
    at = np.full(seq.num_rows, -1, np.int64)        # row -> index into `good`
    unmatched, mismatch, taken = [], [], []
    for j, (rid, s) in enumerate(zip(good["id"].to_pylist(), good["sequence"].to_pylist())):
        rows = rows_of.get(rid if join_on == "id" else s)
        if rows is None:
            unmatched.append(j)
        elif any(seq_strings[i] != s for i in rows):
            mismatch.append(j)
        elif at[rows[0]] >= 0:   # only by sequence: an earlier file already has these residues
            taken.append(j)
        else:
            at[rows] = j
    rejects += _reject_rows(good.take(pa.array(unmatched, pa.int64())), files, "no_sequence")
    rejects += _reject_rows(good.take(pa.array(mismatch, pa.int64())), files, "residue_mismatch")
    rejects += _reject_rows(good.take(pa.array(taken, pa.int64())), files, "duplicate_sequence")
    has = at >= 0
    # take() with nulls where a row has no PSSM.
    idx = pa.array(np.where(has, at, 0), mask=~has)
    table = seq
    for col in PSSM_COLUMNS:
        table = table.append_column(col, good[col].take(idx))
    shards.write_table_shards(table, shards.data_dir(out), ROWS_PER_SHARD)
    shards.write_rejects(rejects, out)
    manifest = shards.write_manifest(
        out, kind="pssm", rows=table.num_rows, residues=int(pc.sum(table["length"]).as_py() or 0),
        sources=[str(seqdir)] + files, rejected=Counter(r["reason"] for r in rejects),
        input_records=table.num_rows + len(rejects), pssm_files=len(files), with_pssm=int(has.sum()),
        without_pssm=int((~has).sum()), join_on=join_on, column_order="ARNDCQEGHILKMFPSTWYV")
    if len(files) != len(set(at[has].tolist())) + len(rejects):
        raise AssertionError(f"{out}: PSSM accounting broken")
    return manifest
