"""PSSM ASCII -> Parquet: vectorised `parse_pssm` vs a line-by-line str.split() parser on ../shared/data/pssm.

    .venv/bin/python bench/bench_pssm.py [--repeats 3]

Both parse the same 635 files (already in memory, so disk speed does not count) and must give
identical sequences and percentages; prints both parse times and the ratio (best of --repeats),
then the same with the shard writing included (rows packed into the binary `pssm` / `zero_row`
cells of schema version 2 and written with `data_prep.shards.write_parquet`, identical for both
sides), so the ratio of the whole ASCII -> Parquet path is shown too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep import shards  # noqa: E402
from data_prep.pssm_format import _percent_table, parse_pssm, parse_pssm_lines  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_shard(parsed: list, path: Path) -> None:
    """The pssm command's columns for parsed files, written as one shard file."""
    table = pa.table({"sequence": [p.sequence for p in parsed],
                      "length": pa.array([len(p.sequence) for p in parsed], pa.int32()),
                      "pssm": shards.pack_residues((p.percent for p in parsed), np.uint8),
                      "zero_row": shards.pack_residues((p.zero_row for p in parsed), np.uint8)})
    shards.write_parquet(table, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    files = sorted((SHARED / "pssm").glob("*.pssm"))
    raw = [f.read_bytes() for f in files]
    _percent_table()  # built once per process (16 MiB lookup table), not per file
    out = Path(tempfile.mkdtemp(prefix="bench_pssm_"))
    best_fast = best_ref = best_fast_w = best_ref_w = float("inf")
    for _ in range(a.repeats):
        t = time.perf_counter()
        fast = [parse_pssm(r) for r in raw]
        best_fast = min(best_fast, time.perf_counter() - t)
        write_shard(fast, out / "fast.parquet")
        best_fast_w = min(best_fast_w, time.perf_counter() - t)
        t = time.perf_counter()
        ref = [parse_pssm_lines(r.decode()) for r in raw]
        best_ref = min(best_ref, time.perf_counter() - t)
        write_shard(ref, out / "ref.parquet")
        best_ref_w = min(best_ref_w, time.perf_counter() - t)
    shutil.rmtree(out)
    for x, y in zip(fast, ref):
        assert x.sequence == y.sequence and np.array_equal(x.percent, y.percent)
    rows = sum(len(p.sequence) for p in fast)
    print(f"{len(files)} files, {rows} rows, {sum(map(len, raw)) / 1e6:.1f} MB")
    print(f"line-by-line str.split(): {best_ref:.3f} s ({rows / best_ref / 1e6:.2f} M rows/s)")
    print(f"vectorised parse_pssm:    {best_fast:.3f} s ({rows / best_fast / 1e6:.2f} M rows/s)")
    print(f"ratio: {best_ref / best_fast:.1f}x (target >= 5x: {'MET' if best_ref / best_fast >= 5 else 'NOT MET'})")
    ratio = best_ref_w / best_fast_w
    print(f"ASCII -> Parquet (parse + binary cells + write_parquet): str.split() {best_ref_w:.3f} s, "
          f"vectorised {best_fast_w:.3f} s, ratio {ratio:.1f}x (target >= 5x: {'MET' if ratio >= 5 else 'NOT MET'})")


if __name__ == "__main__":
    main()
