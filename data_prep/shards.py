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

from engine.sources import residue_arrays  # noqa: F401  (the one decoder of per-residue columns)

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

