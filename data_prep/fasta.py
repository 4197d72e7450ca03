"""`python -m data_prep fasta IN... --out DIR`: FASTA (plain or gzip) -> sequence shards via Ray Data.

Pass 1 (Ray Data, one row per byte range): each task reads its range, parses it with the
vectorised block parser and writes its rows to staging Parquet files named by range number.
The driver then (optionally) removes duplicate ids (first valid occurrence wins), renames the
staged files to part-00000... in input order, and writes rejects and the manifest. Range sizes
are fixed (--block-size), not derived from the worker count, so the output is the same on any
machine.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import shards
from .errors import DataPrepError
from .fasta_parse import SEQUENCE_SCHEMA, parse_block
from .fasta_read import ByteRange, iter_gzip_blocks, plan_ranges, read_range

DEFAULT_BLOCK_SIZE = 32 << 20
MAX_BLOCK_SIZE = 1 << 30


@dataclass(frozen=True)
class FastaOptions:
    min_length: int = 1            # shorter sequences are rejected (too_short)
    max_length: int | None = None  # longer sequences are rejected (too_long); None = no limit
    dedupe: bool = False           # reject later records whose id was already written (duplicate_id)
    shard_size: int = 100_000      # maximum rows per Parquet shard
    block_size: int = DEFAULT_BLOCK_SIZE  # bytes per parallel byte range (fixed => deterministic output)


def _blocks(rng: ByteRange, block_size: int, out: dict):
    """(block bytes, file_start, block line offset relative to the range's first line); sets
    out["owned_newlines"] for a plain range (the driver sums them into file line numbers)."""
    if rng.gzip:
        yield from iter_gzip_blocks(rng.source, block_size)
        return
    data, file_start, skipped, out["owned_newlines"] = read_range(rng.source, rng.start, rng.end)
    yield data, file_start, skipped


def process_range(row: dict, *, staging: str, opts: dict) -> dict:
    """Ray Data map function: parse one byte range and write its staged shards.

    The summary travels back as one JSON string column (ragged lists of rejects and file names
    would otherwise need a common Arrow schema across blocks).
    """
    return {"task": row["task"], "summary": json.dumps(_process_range(row, staging, opts))}


def _process_range(row: dict, staging: str, opts: dict) -> dict:
    cpu0 = time.process_time()
    rng = ByteRange(**{k: row[k] for k in ("task", "source", "start", "end", "gzip")})
    o = FastaOptions(**opts)
    out = {"task": rng.task, "source": rng.source, "n_records": 0, "rows": 0, "residues": 0,
           "stripped_stops": 0, "files": [], "rejects": [], "error": None, "owned_newlines": 0}
    try:
        n_files = 0
        for data, file_start, line0 in _blocks(rng, o.block_size, out):
            block = parse_block(data, source=rng.source, file_start=file_start,
                                byte_offset=max(rng.start, 0),
                                min_length=o.min_length, max_length=o.max_length)
            for rej in block.rejects:
                out["rejects"].append({**rej, "record_index": rej["record_index"] + out["n_records"],
                                       "line": rej["line"] + line0})
            t = block.table
            for s in range(0, t.num_rows, o.shard_size):
                path = Path(staging) / f"{rng.task:06d}-{n_files:05d}.parquet"
                shards.write_parquet(t.slice(s, o.shard_size), path)
                if o.dedupe:  # where each row came from, to report duplicates precisely
                    meta = pa.table({"record_index": block.record_index[s:s + o.shard_size] + out["n_records"],
                                     "line": block.line[s:s + o.shard_size] + line0})
                    pq.write_table(meta, str(path) + ".meta")
                out["files"].append(str(path))
                n_files += 1
            out["n_records"] += block.n_records
            out["rows"] += t.num_rows
            out["residues"] += int(pc.sum(t["length"]).as_py() or 0)
            out["stripped_stops"] += block.stripped_stops
    except DataPrepError as err:  # travels back as data: the driver raises it as one clear line
        out["error"] = str(err)
    out["cpu_seconds"] = time.process_time() - cpu0   # cost accounting for bench/bench_fasta.py
    return out


def run_ranges(ranges: list[ByteRange], staging: Path, opts: FastaOptions) -> list[dict]:
    """Pass 1 through Ray Data; results sorted by range number."""
    from .ray_utils import ensure_ray, use_all_cpus

    ray = ensure_ray()
    items = [asdict(r) for r in ranges]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = use_all_cpus(ds.map(process_range, fn_kwargs={"staging": str(staging), "opts": asdict(opts)}))
    results = [json.loads(r["summary"]) for r in sorted(ds.take_all(), key=lambda r: r["task"])]
    for r in results:
        if r["error"]:
            raise DataPrepError(r["error"])
    return results


def _find_duplicates(files: list[str]) -> dict[str, np.ndarray]:
    """Row positions (per staged file) whose id was already seen in an earlier row."""
    if not files:
        return {}
    ids = pa.chunked_array([pq.read_table(f, columns=["id"])["id"].combine_chunks() for f in files])
    codes = pc.dictionary_encode(ids).combine_chunks().indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    dup = np.ones(len(codes), bool)
    dup[first] = False
    sizes = [len(c) for c in ids.chunks]
    bounds = np.cumsum([0] + sizes)
    return {f: np.flatnonzero(dup[bounds[i]:bounds[i + 1]]) for i, f in enumerate(files)
            if dup[bounds[i]:bounds[i + 1]].any()}


def convert_fasta(inputs: list[str], out: str | Path, opts: FastaOptions = FastaOptions(),
                  stats: dict | None = None) -> dict:
    """FASTA files -> OUT/data, OUT/rejects, OUT/manifest.json (kind "sequences"); returns the manifest.

    `stats`, if given, receives "task_cpu_seconds": the CPU time the Ray tasks spent (benches)."""
    if not inputs:
        raise DataPrepError("fasta: no input files given")
    if opts.min_length < 0 or (opts.max_length is not None and opts.max_length < opts.min_length):
        raise DataPrepError(f"fasta: bad length limits min={opts.min_length} max={opts.max_length}")
    if opts.shard_size < 1 or opts.block_size < 1:
        raise DataPrepError("fasta: --shard-size and --block-size must be positive")
    if opts.block_size > MAX_BLOCK_SIZE:  # a block's columns are Arrow arrays with 32-bit offsets
        raise DataPrepError(f"fasta: --block-size-mb must be at most {MAX_BLOCK_SIZE >> 20}")
    out = Path(out).resolve()
    ranges = plan_ranges([str(Path(p).resolve()) for p in inputs], opts.block_size)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        results = run_ranges(ranges, staging, opts)
        if stats is not None:
            stats["task_cpu_seconds"] = sum(r["cpu_seconds"] for r in results)
        manifest = _finish(results, out, staging, opts, [r.source for r in ranges if r.start == 0])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _finish(results: list[dict], out: Path, staging: Path, opts: FastaOptions, sources: list[str]) -> dict:
    # Block-local record indices and lines -> per-file ones (sum over earlier ranges of the file).
    rejects: list[dict] = []
    rec_base: Counter = Counter()
    line_base: Counter = Counter()
    file_base = {}
    for r in results:
        src = r["source"]
        for rej in r["rejects"]:
            rejects.append({"source": src, "record_index": rej["record_index"] + rec_base[src],
                            "id": rej["id"], "line": rej["line"] + line_base[src] + 1,
                            "reason": rej["reason"]})
        for f in r["files"]:
            file_base[f] = (src, rec_base[src], line_base[src])
        rec_base[src] += r["n_records"]
        line_base[src] += r["owned_newlines"]
    files = [f for r in results for f in r["files"]]
    rows = sum(r["rows"] for r in results)
    residues = sum(r["residues"] for r in results)
    if opts.dedupe:
        for f, dup_rows in _find_duplicates(files).items():
            table = pq.read_table(f)
            meta = pq.read_table(f + ".meta")
            src, rb, lb = file_base[f]
            dup_ids = table["id"].take(pa.array(dup_rows)).to_pylist()
            for i, rid in zip(dup_rows.tolist(), dup_ids):
                rejects.append({"source": src, "record_index": int(meta["record_index"][i].as_py()) + rb,
                                "id": rid, "line": int(meta["line"][i].as_py()) + lb + 1,
                                "reason": "duplicate_id"})
            keep = np.ones(table.num_rows, bool)
            keep[dup_rows] = False
            kept = table.filter(pa.array(keep))
            rows -= table.num_rows - kept.num_rows
            residues -= int(pc.sum(table["length"]).as_py() or 0) - int(pc.sum(kept["length"]).as_py() or 0)
            shards.write_parquet(kept, f)
    # Publish: staged files -> OUT/data/part-NNNNN.parquet in input order.
    ddir = shards.data_dir(out)
    ddir.mkdir(parents=True, exist_ok=True)
    for old in ddir.glob("*.parquet"):
        old.unlink()
    n = 0
    for f in files:
        if pq.ParquetFile(f).metadata.num_rows == 0 and n > 0:
            continue
        shutil.move(f, ddir / f"part-{n:05d}.parquet")
        n += 1
    if n == 0:
        shards.write_parquet(SEQUENCE_SCHEMA.empty_table(), ddir / "part-00000.parquet")
        n = 1
    order = {s: i for i, s in enumerate(sources)}
    rejects.sort(key=lambda r: (order.get(r["source"], 0), r["record_index"]))
    shards.write_rejects(rejects, out)
    return shards.write_manifest(
        out, kind="sequences", rows=rows, residues=residues, sources=sources,
        rejected=Counter(r["reason"] for r in rejects),
        input_records=sum(r["n_records"] for r in results),
        shards=n, stripped_trailing_stops=sum(r["stripped_stops"] for r in results),
        options=asdict(opts))
