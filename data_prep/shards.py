"""Reading and writing shard directories (layout in docs/contracts.md).

OUT/data/part-*.parquet, OUT/rejects/part-*.parquet, OUT/manifest.json and OUT/README.md (a
Hugging Face dataset card whose `configs:` point `datasets.load_dataset(OUT)` at the data files
only, so the rejects and the manifest never join its train split).

Schema version 2: per-residue columns are `binary`, one fixed-width value per residue (tokens and
PSSM percentages uint8, labels int8), built by `pack_residues` and read by `residue_arrays`.
Parquet stores a binary cell as one length-prefixed byte run, where list<uint8> cost a 4-byte
INT32 value plus repetition levels per residue (the FASTA ingest spent most of its time there).
Data files are written in row groups of `ROW_GROUP_ROWS` rows: the training engine reads and
assigns shards by row group, so groups must be small and many.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.sources import residue_arrays  # noqa: F401  (the one decoder of per-residue columns)

from .errors import DataPrepError
from .vocab import vocab_hash

SCHEMA_VERSION = 2
ROW_GROUP_ROWS = 512
# lz4: cheap to write and read; sequences and tokens barely compress with it, ids and text do.
# Dictionaries and statistics do not pay for unique ids and binary cells.
PARQUET_OPTIONS = dict(compression="lz4", use_dictionary=False, write_statistics=False)
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


def check_schema(out: str | Path) -> dict:
    """The manifest of shard directory `out`, or a one-line DataPrepError if it is missing or was
    written in another schema version (every reader assumes version 2's binary cells)."""
    try:
        manifest = read_manifest(out)
    except FileNotFoundError as err:
        raise DataPrepError(str(err)) from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        old = " (list columns)" if version == 1 else ""
        rerun = "python -m finetune embed" if manifest.get("kind") == "embeddings" else "python -m data_prep"
        raise DataPrepError(f"{out}: shards are schema_version {version}{old}; this code reads version "
                            f"{SCHEMA_VERSION} (binary per-residue columns): re-run the {rerun} command "
                            "that made them")
    return manifest


def pack_residues(arrays, dtype=np.uint8) -> pa.BinaryArray:
    """Per-row arrays (None = null row) -> one binary column, each cell the row's values as `dtype`
    bytes: the only way writers and tests build per-residue columns (`residue_arrays` reads them)."""
    arrays = list(arrays)
    valid = np.array([a is not None for a in arrays], bool)
    parts = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a in arrays if a is not None]
    sizes = np.zeros(len(arrays), np.int64)
    sizes[valid] = [p.nbytes for p in parts]
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.concatenate(parts).view(np.uint8) if parts else np.zeros(0, np.uint8)
    return binary_array(data, offsets, None if valid.all() else valid)


def binary_array(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None = None,
                 arrow_type=pa.binary()) -> pa.Array:
    """Binary (or string) array of n = len(offsets)-1 cells over one byte buffer: cell i is
    data[offsets[i]:offsets[i+1]] (no copy of `data`); `valid` False marks null cells."""
    n = len(offsets) - 1
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} bytes do not fit one binary array (2 GiB); write smaller batches")
    mask = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    buffers = [mask, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(arrow_type, n, buffers, null_count=-1 if valid is not None else 0)


def write_parquet(table: pa.Table, path: str | Path, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """One data file: the project's Parquet options, row groups of at most `row_group_rows`."""
    pq.write_table(table, path, row_group_size=row_group_rows, **PARQUET_OPTIONS)


def write_table_shards(table: pa.Table, out_dir: Path, rows_per_shard: int, prefix: str = "part",
                       row_group_rows: int = ROW_GROUP_ROWS) -> list[Path]:
    """Split `table` into parquet files of at most `rows_per_shard` rows (row groups of at most
    `row_group_rows`); always writes >= 1 file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{prefix}-*.parquet"):
        old.unlink()
    paths = []
    n = max(table.num_rows, 1)
    for i, start in enumerate(range(0, n, rows_per_shard)):
        path = out_dir / f"{prefix}-{i:05d}.parquet"
        write_parquet(table.slice(start, rows_per_shard), path, row_group_rows)
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
    write_dataset_card(out, manifest)
    return manifest


def _reject_rows(out: str | Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(rejects_dir(out).glob("*.parquet")))


def write_dataset_card(out: str | Path, manifest: dict) -> Path:
    """OUT/README.md: a dataset card whose `configs:` name the data files, so that
    `datasets.load_dataset(OUT)` reads exactly the written rows. The rejects get their own config
    only when they hold rows (datasets cannot read a Parquet file without rows)."""
    configs = [("default", "data/*.parquet")]
    if rejects_dir(out).is_dir() and _reject_rows(out):
        configs.append(("rejects", "rejects/*.parquet"))
    yaml = "".join(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {glob}\n"
                   for name, glob in configs)
    loads = "\n".join(f'datasets.load_dataset("{Path(out).name}"{"" if n == "default" else f", {n!r}"})'
                       f'  # {g}' for n, g in configs)
    text = (f"---\nconfigs:\n{yaml}---\n\n# protlm shards: {manifest['kind']}\n\n"
            f"{manifest['rows']} rows, {manifest['residues']} residues, schema version "
            f"{manifest['schema_version']} (columns: docs/contracts.md of protlm; per-residue columns "
            f"are binary, one value per residue). Counts, sources and reject reasons are in "
            f"manifest.json.\n\n```python\nimport datasets\n{loads}\n```\n")
    path = Path(out) / "README.md"
    path.write_text(text)
    return path

