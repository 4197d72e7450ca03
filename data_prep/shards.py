"""Reading and writing shard directories (layout in docs/contracts.md).

OUT/data/part-*.parquet, OUT/rejects/part-*.parquet and OUT/manifest.json.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .vocab import vocab_hash

SCHEMA_VERSION = 1
REJECT_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("record_index", pa.int64()),
    ("id", pa.string()),
    ("line", pa.int64()),
    ("reason", pa.string()),
])


def data_dir(out: str | Path) -> Path:
    return Path(out) / "data"


def rejects_dir(out: str | Path) -> Path:
    return Path(out) / "rejects"


def data_files(out: str | Path) -> list[Path]:
    files = sorted(data_dir(out).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out}: no shards under {data_dir(out)} (run python -m data_prep first)")
    return files


def read_table(out: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All data shards of `out` as one Arrow table, in shard order."""
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in data_files(out)])


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing manifest (is {out} a data_prep output?)")
    return json.loads(path.read_text())


def write_table_shards(table: pa.Table, out_dir: Path, rows_per_shard: int, prefix: str = "part") -> list[Path]:
    """Split `table` into parquet files of at most `rows_per_shard` rows; always writes >= 1 file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{prefix}-*.parquet"):
        old.unlink()
    paths = []
    n = max(table.num_rows, 1)
    for i, start in enumerate(range(0, n, rows_per_shard)):
        path = out_dir / f"{prefix}-{i:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_shard), path)
        paths.append(path)
    return paths


def write_rejects(rejects: list[dict] | pa.Table, out: str | Path) -> pa.Table:
    table = rejects if isinstance(rejects, pa.Table) else pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    write_table_shards(table, rejects_dir(out), rows_per_shard=1_000_000)
    return table


def write_manifest(out: str | Path, *, kind: str, rows: int, residues: int, sources: list[str],
                   rejected: dict[str, int] | Counter, input_records: int, **extra) -> dict:
    """Write manifest.json; refuses to write one that breaks input = written + rejected."""
    rejected = dict(sorted(Counter(rejected).items()))
    if input_records != rows + sum(rejected.values()):
        raise AssertionError(
            f"{out}: accounting broken: {input_records} input records != {rows} written + "
            f"{sum(rejected.values())} rejected")
    manifest = {"schema_version": SCHEMA_VERSION, "kind": kind, "rows": rows, "residues": residues,
                "input_records": input_records, "rejected": rejected, "sources": sources,
                "vocab_hash": vocab_hash(), **extra}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def residue_arrays(column: pa.Array | pa.ChunkedArray, dtype=np.uint8
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A per-residue column as (flat values, offsets [n+1] in values, valid [n]).

    Accepts the binary encoding (values of `dtype` packed in a binary cell) and list columns, so
    every reader goes through this one function; `offsets` count values of `dtype` (a PSSM row has
    20 per residue), and row i is `flat[offsets[i]:offsets[i+1]]` (empty and invalid when null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    valid = (column.is_valid().to_numpy(zero_copy_only=False) if column.null_count
             else np.ones(n, dtype=bool))
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        off_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
        _, off_buf, data_buf = column.buffers()
        offsets = np.frombuffer(off_buf, dtype=off_type)[column.offset:column.offset + n + 1].astype(np.int64)
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        base = offsets[0]
        flat = data[base:offsets[-1]].view(np.dtype(dtype))
        return flat, (offsets - base) // np.dtype(dtype).itemsize, valid
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        offsets = column.offsets.to_numpy().astype(np.int64)
        values = column.values.to_numpy(zero_copy_only=False)
        flat = values[offsets[0]:offsets[-1]].astype(dtype, copy=False)
        return flat, offsets - offsets[0], valid
    raise TypeError(f"not a per-residue column: {column.type}")
