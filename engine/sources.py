"""Training data sources: shard directories (local or object store) indexed by Parquet row group.

A task declares what it trains on as `Source`s (a shard directory or URI plus the columns its
`collate` needs) and, for several sources, a `Mixture` with weights. `SourceIndex` opens one
source without reading its data: the file list and each file's footer give the row groups
("chunks"), the unit in which the engine plans, assigns to ranks and reads. Only the columns a
task asks for are ever read, and only the row groups of the reading rank.

Local paths and URIs (s3://, gs://, file://) go through `pyarrow.fs`, so the same code reads a
laptop's directory and a cluster's bucket.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import UserError

# The shard contract's version (docs/contracts.md; data_prep.shards.SCHEMA_VERSION, which a test
# keeps equal): per-residue columns are binary, one fixed-width value per residue.
SHARD_SCHEMA_VERSION = 2


class DataError(UserError, ValueError):
    """A user-caused data problem (missing shards, missing column, old format); one line naming the path."""


@dataclass
class Source:
    path: str  # shard directory (data_prep output) or its URI (s3://bucket/dir, gs://..., file://...)
    columns: list[str]  # columns `collate` needs besides "length"
    weight: float = 1.0  # share of an epoch's proteins when several sources are mixed
    rows: np.ndarray | None = None  # global row indices to use (None = every row), e.g. one split
    name: str = ""  # for messages and logs ("" = the directory name)
    shuffle_rows: bool = False  # draw single rows, not whole row groups: for small sources whose row order is not random (labelled sets sorted by class)

    @property
    def label(self) -> str:
        return self.name or posixpath.basename(self.path.rstrip("/"))


@dataclass
class Mixture:
    """What one epoch draws from: each source's share by weight, `proteins` draws in all
    (0 = every row of every source once). One source with weight 1 is a plain pass over it."""
    sources: list[Source]
    proteins: int = 0


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


@dataclass
class SourceIndex:
    """Row groups of one source: `file[i]`, `group[i]`, `first_row[i]` (global row of the chunk's
    first row) and `rows[i]` for chunk i, plus each chunk's bytes per column (for read accounting)."""
    source: Source
    fs: pafs.FileSystem
    files: list[str]
    file: np.ndarray
    group: np.ndarray
    first_row: np.ndarray
    rows: np.ndarray
    column_bytes: list[dict[str, int]] = field(default_factory=list)
    picked: np.ndarray | None = None  # sorted global rows of `Source.rows` (None = all rows)

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    def selected_rows(self, chunk: int) -> np.ndarray:
        """Row numbers inside chunk `chunk` that this source uses (all of them unless `Source.rows`)."""
        n = int(self.rows[chunk])
        if self.picked is None:
            return np.arange(n)
        lo = int(self.first_row[chunk])
        sel = self.picked
        return sel[np.searchsorted(sel, lo):np.searchsorted(sel, lo + n)] - lo

    def selected_counts(self) -> np.ndarray:
        """Rows used per chunk."""
        if self.picked is None:
            return self.rows.copy()
        sel = self.picked
        return np.searchsorted(sel, self.first_row + self.rows) - np.searchsorted(sel, self.first_row)

    def read(self, chunk: int, columns: list[str], cache: dict | None = None) -> pa.Table:
        """One row group, only `columns`; `cache` keeps open files across calls of one reader."""
        fi = int(self.file[chunk])
        handle = cache.get((id(self), fi)) if cache is not None else None
        if handle is None:
            handle = pq.ParquetFile(self.fs.open_input_file(self.files[fi]))
            if cache is not None:
                cache[(id(self), fi)] = handle
        return handle.read_row_group(int(self.group[chunk]), columns=columns)

    def read_bytes(self, chunk: int, columns: list[str]) -> int:
        return sum(self.column_bytes[chunk].get(c, 0) for c in columns)


def open_source(source: Source, limit: int = 0) -> SourceIndex:
    """Index `source` from its manifest and Parquet footers; `limit` keeps the first N rows' chunks."""
    fs, base = _filesystem(source.path)
    where = source.path
    try:
        manifest = json.loads(fs.open_input_stream(f"{base}/manifest.json").read())
    except (FileNotFoundError, OSError):
        raise DataError(f"{where}: no manifest.json (is it a data_prep output? run python -m data_prep first)") from None
    version = manifest.get("schema_version")
    if version != SHARD_SCHEMA_VERSION:
        raise DataError(f"{where}: shards are schema_version {version}; this code reads version "
                        f"{SHARD_SCHEMA_VERSION} (binary per-residue columns): re-run the python -m data_prep "
                        f"command that made them")
    files = _data_files(fs, base, where)
    wanted = list(dict.fromkeys(["length", *source.columns]))
    file_idx, group_idx, counts, column_bytes = [], [], [], []
    for fi, path in enumerate(files):
        meta = pq.ParquetFile(fs.open_input_file(path)).metadata
        names = meta.schema.to_arrow_schema().names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        position = {n: names.index(n) for n in wanted}
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            file_idx.append(fi)
            group_idx.append(g)
            counts.append(rg.num_rows)
            column_bytes.append(_column_bytes(rg, wanted, position))
    rows = np.asarray(counts, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    index = SourceIndex(source, fs, files, np.asarray(file_idx), np.asarray(group_idx), first, rows, column_bytes)
    if limit:
        keep = first < limit
        index = SourceIndex(source, fs, files, index.file[keep], index.group[keep], first[keep],
                            np.minimum(rows[keep], limit - first[keep]),
                            [b for b, k in zip(column_bytes, keep) if k])
    if source.rows is not None:
        picked = np.unique(np.asarray(source.rows, dtype=np.int64))
        total = int(rows.sum())
        if len(picked) and (picked[0] < 0 or picked[-1] >= total):
            raise DataError(f"{where}: selected row {int(picked[-1])} is out of range ({total} rows)")
        index.picked = picked
    return index


def _data_files(fs: pafs.FileSystem, base: str, where: str) -> list[str]:
    """The Parquet files under `base`/data, sorted; a one-line DataError when there are none."""
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/data", allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise DataError(f"{where}: no shards under {where.rstrip('/')}/data (run python -m data_prep first)")
    return files


def _column_bytes(rg, wanted: list[str], position: dict[str, int]) -> dict[str, int]:
    """Compressed bytes per top-level column in one row group (a list column has one leaf)."""
    out = dict.fromkeys(wanted, 0)
    for j in range(rg.num_columns):
        col = rg.column(j)
        top = col.path_in_schema.split(".")[0]
        if top in out:
            out[top] += col.total_compressed_size
    return out


def row_dicts(table: pa.Table, source_id: int) -> list[dict]:
    """Rows of a row group as dicts for `Task.collate`: binary and list columns become numpy
    arrays (binary as uint8: tasks view them as their dtype; lists in their own value type, e.g.
    finetune's float32 `pooled`), null stays None, scalars are Python values; "source" is the
    source's position in the task's list."""
    n = table.num_rows
    columns: dict[str, list] = {}
    for name in table.column_names:
        col = table.column(name)
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if _is_sequence(col.type):
            listed = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            flat, offsets, valid = residue_arrays(col, col.type.value_type.to_pandas_dtype() if listed else np.uint8)
            columns[name] = [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(n)]
        else:
            columns[name] = col.to_pylist()
    columns["source"] = [source_id] * n
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _is_sequence(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_list(t)
            or pa.types.is_large_list(t))


def residue_arrays(column: pa.Array | pa.ChunkedArray, dtype=np.uint8
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A per-residue column as (flat values, offsets [n+1] into them, valid [n]), zero-copy.

    The one decoder of per-residue columns (data_prep re-exports it): the binary encoding (values
    of `dtype` packed in a binary cell) and list columns alike; `offsets` count values of `dtype`
    (a PSSM row has 20 per residue); row i is `flat[offsets[i]:offsets[i+1]]` (empty when null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else np.ones(n, bool)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        _, off_buf, data_buf = column.buffers()
        off = np.frombuffer(off_buf, np.int64 if pa.types.is_large_binary(column.type) else np.int32)
        off = off[column.offset:column.offset + n + 1].astype(np.int64)
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        flat = data[off[0]:off[-1]]
        size = np.dtype(dtype).itemsize
        return flat.view(dtype), (off - off[0]) // size, valid
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        off = column.offsets.to_numpy().astype(np.int64)
        values = column.values.to_numpy(zero_copy_only=False)[off[0]:off[-1]]
        return values.astype(dtype, copy=False), off - off[0], valid
    raise TypeError(f"not a per-residue column: {column.type}")


def shard_columns(path: str) -> list[str]:
    """Column names of a shard directory (from its first data file's schema)."""
    fs, base = _filesystem(path)
    return pq.ParquetFile(fs.open_input_file(_data_files(fs, base, path)[0])).schema_arrow.names


def read_column(path: str, name: str) -> np.ndarray:
    """One column of every row of a shard directory, in row order (for small per-protein columns
    such as `split`, which tasks use to choose rows)."""
    index = open_source(Source(path, [name]))
    cache: dict = {}
    parts = [index.read(c, [name], cache).column(name).to_numpy(zero_copy_only=False) for c in range(len(index.rows))]
    return np.concatenate(parts) if parts else np.zeros(0)
