"""`python -m data_prep merge IN... --out DIR`: concatenate shard directories of one kind.

Used e.g. to put FLIP test rows and the NetSurfP sets into one evaluation directory. Rows,
rejects and manifest counts are summed, so the accounting invariant still holds.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import shards
from .errors import DataPrepError


def merge(inputs: list[str], out: str | Path, rows_per_shard: int = 50_000) -> dict:
    if not inputs:
        raise DataPrepError("merge: no inputs")
    manifests = [shards.check_schema(i) for i in inputs]
    kinds = {m["kind"] for m in manifests}
    if len(kinds) != 1:
        raise DataPrepError(f"merge: inputs have different kinds {sorted(kinds)}")
    tables = [shards.read_table(i) for i in inputs]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as err:
        raise DataPrepError(f"merge: schemas differ: {err}") from None
    rejects = [pq.read_table(f) for i in inputs for f in sorted(shards.rejects_dir(i).glob("*.parquet"))]
    rej = pa.concat_tables(rejects, promote_options="permissive") if rejects else None
    shards.write_table_shards(table, shards.data_dir(out), rows_per_shard)
    shards.write_rejects(rej if rej is not None else [], out)
    rejected = Counter()
    for m in manifests:
        rejected.update(m["rejected"])
    return shards.write_manifest(
        out, kind=kinds.pop(), rows=table.num_rows, residues=sum(m["residues"] for m in manifests),
        sources=[s for m in manifests for s in m["sources"]], rejected=rejected,
        input_records=sum(m["input_records"] for m in manifests), merged_from=[str(i) for i in inputs])
