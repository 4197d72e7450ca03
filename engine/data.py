"""Shard reading for training workers.

Every worker reads the `length` column of all shard files (4 bytes per protein), so every rank
computes the same global batch plan; then it reads only the rows its own batches use, one file at
a time, keeping just the columns the task asks for. See docs/engine.md for why this is used
rather than Ray Data's `streaming_split`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class DataError(ValueError):
    """A user-caused data problem (missing shards, missing column); one line naming the path."""


class ShardDataset:
    """Rows of a data_prep shard directory, addressed by a global row index."""

    def __init__(self, directory: str | Path, columns: list[str], limit: int = 0):
        self.directory = Path(directory)
        files = sorted((self.directory / "data").glob("*.parquet"))
        if not files:
            raise DataError(f"{self.directory}: no shards under {self.directory / 'data'} (run python -m data_prep first)")
        self.files = files
        self.columns = list(dict.fromkeys(["length", *columns]))
        sizes, lengths = [], []
        for f in files:
            schema = pq.read_schema(f)
            missing = [c for c in self.columns if c not in schema.names]
            if missing:
                raise DataError(f"{f}: missing column(s) {', '.join(missing)}")
            col = pq.read_table(f, columns=["length"]).column("length").to_numpy()
            sizes.append(len(col))
            lengths.append(col)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.lengths = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        if limit:
            self.lengths = self.lengths[:limit]
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def load(self, rows: np.ndarray) -> None:
        """Keep exactly `rows` in memory (the rows of this rank's batches for one epoch)."""
        wanted = np.unique(np.asarray(rows, dtype=np.int64))
        self._rows = {}
        file_of = np.searchsorted(self.offsets, wanted, side="right") - 1
        for fi in np.unique(file_of):
            global_idx = wanted[file_of == fi]
            table = pq.read_table(self.files[fi], columns=self.columns).take(
                pa.array(global_idx - self.offsets[fi]))
            for r, row in zip(global_idx, _rows_as_numpy(table)):
                self._rows[int(r)] = row

    def row(self, index: int) -> dict:
        try:
            return self._rows[int(index)]
        except KeyError:
            raise KeyError(f"row {index} was not loaded (call load() with this epoch's rows)") from None


def _rows_as_numpy(table: pa.Table) -> list[dict]:
    """Rows as dicts; list columns become numpy arrays (views into one flat buffer), null stays None."""
    columns = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            flat = col.values.to_numpy(zero_copy_only=False)  # offsets index into .values directly
            offsets = col.offsets.to_numpy()
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            columns[name] = [flat[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    return [{k: columns[k][i] for k in columns} for i in range(table.num_rows)]
