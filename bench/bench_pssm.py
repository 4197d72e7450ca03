"""PSSM parsing: vectorised `parse_pssm` vs a line-by-line str.split() parser on ../shared/data/pssm.

    .venv/bin/python bench/bench_pssm.py [--repeats 3]

Both parse the same 635 files (already in memory, so disk speed does not count) and must give
identical sequences and percentages; prints both times and the ratio (best of --repeats).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.pssm_format import _percent_table, parse_pssm, parse_pssm_lines  # noqa: E402

SHARED = Path(os.environ.get("PROTLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    files = sorted((SHARED / "pssm").glob("*.pssm"))
    raw = [f.read_bytes() for f in files]
    _percent_table()  # built once per process (16 MiB lookup table), not per file
    best_fast = best_ref = float("inf")
    for _ in range(a.repeats):
        t = time.perf_counter()
        fast = [parse_pssm(r) for r in raw]
        best_fast = min(best_fast, time.perf_counter() - t)
        t = time.perf_counter()
        ref = [parse_pssm_lines(r.decode()) for r in raw]
        best_ref = min(best_ref, time.perf_counter() - t)
    for x, y in zip(fast, ref):
        assert x.sequence == y.sequence and np.array_equal(x.percent, y.percent)
    rows = sum(len(p.sequence) for p in fast)
    print(f"{len(files)} files, {rows} rows, {sum(map(len, raw)) / 1e6:.1f} MB")
    print(f"line-by-line str.split(): {best_ref:.3f} s ({rows / best_ref / 1e6:.2f} M rows/s)")
    print(f"vectorised parse_pssm:    {best_fast:.3f} s ({rows / best_fast / 1e6:.2f} M rows/s)")
    print(f"ratio: {best_ref / best_fast:.1f}x (target >= 5x: {'MET' if best_ref / best_fast >= 5 else 'NOT MET'})")


if __name__ == "__main__":
    main()
