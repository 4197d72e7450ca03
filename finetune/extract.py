"""Per-residue embeddings at scale: any embedder -> embedding shards (+ optional HDF5).

Rows are sorted by length and cut into residue-budget batches, so a batch wastes little padding.
Proteins longer than `chunk_residues` are embedded in overlapping windows (at most
`batch_residues` residues in flight) and stitched at the middle of each overlap: memory stays
bounded for any length and no protein is dropped. Chunked rows are flagged and counted.

Output layout (a shard directory, docs/finetune.md):
  id, length, embedding (large_binary: float16 [length, dim] row-major), pooled (list<float32>,
  the per-residue mean), chunked (bool), plus the label columns of the input shards.
HDF5 in the bio_embeddings convention (one dataset per protein id, attribute `original_id`):
  OUT/reduced_embeddings_file.h5 always (the pooled float32 [dim] vector per protein), and the
  per-residue float16 [length, dim] file where `--hdf5 FILE` asks for it.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data_prep.errors import DataPrepError
from data_prep.shards import check_schema, data_files, residue_arrays, write_manifest
from data_prep.vocab import PAD_ID
from engine.batching import pack_batches
from engine.logs import CountProgress
from engine.ray_env import ensure_ray

from .config import EmbedConfig
from .embedders import describe, load_embedder
from .errors import FinetuneError

log = logging.getLogger("finetune")

# Input columns that are not carried into embedding shards (the embedding replaces them).
DROPPED_COLUMNS = {"sequence", "tokens", "pssm", "zero_row", "description"}


def plan_batches(lengths: np.ndarray, budget: int, max_rows: int) -> list[np.ndarray]:
    """Row indices in length-sorted batches with rows * longest <= budget: the engine's packer
    (engine.batching.pack_batches) without length noise; a row longer than the budget goes alone."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    return pack_batches(lengths, max(budget, int(lengths.max())), max_rows, 1.0, np.random.default_rng(0))


def windows(length: int, chunk: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, keep start, keep end) covering [0, length) exactly once."""
    if overlap >= chunk:
        raise FinetuneError(f"config key embed.chunk_overlap ({overlap}) must be < chunk_residues ({chunk})")
    step = chunk - overlap
    starts = [0]
    while starts[-1] + chunk < length:
        starts.append(starts[-1] + step)
    keeps = [0] + [s + overlap // 2 for s in starts[1:]] + [length]
    return [(s, min(s + chunk, length), keeps[k], keeps[k + 1]) for k, s in enumerate(starts)]


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "float16" and device.type != "cuda":
        raise FinetuneError("config key embed.dtype: float16 needs a GPU (use bfloat16 or float32 on CPU)")
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _pad(token_arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(t) for t in token_arrays], dtype=torch.long)
    tokens = torch.full((len(token_arrays), int(lengths.max())), PAD_ID, dtype=torch.long)
    for row, t in enumerate(token_arrays):
        tokens[row, : len(t)] = torch.from_numpy(np.asarray(t, dtype=np.int64))
    return tokens, lengths


class BatchEmbedder:
    """Embeds token arrays with residue-budget batches; the chunked path for long proteins."""

    def __init__(self, embedder, cfg: EmbedConfig):
        self.embedder, self.cfg = embedder, cfg
        self.device = torch.device(getattr(embedder, "device", "cpu"))

    def _forward(self, token_arrays: list[np.ndarray]) -> list[np.ndarray]:
        tokens, lengths = _pad(token_arrays)
        with torch.inference_mode(), _autocast(self.device, self.cfg.dtype):
            out = self.embedder.embed(tokens.to(self.device), lengths.to(self.device))
        out = out.float().cpu().numpy()
        return [out[row, :n] for row, n in enumerate(lengths.tolist())]

    def _embed_long(self, tokens: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        spans = windows(len(tokens), cfg.chunk_residues, cfg.chunk_overlap)
        result = np.empty((len(tokens), self.embedder.dim), dtype=np.float32)
        per_batch = max(1, cfg.batch_residues // cfg.chunk_residues)
        for first in range(0, len(spans), per_batch):
            group = spans[first: first + per_batch]
            outs = self._forward([tokens[s:e] for s, e, _, _ in group])
            for (s, _, a, b), out in zip(group, outs):
                result[a:b] = out[a - s: b - s]
        return result

    def embed(self, token_arrays: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-protein float32 [L, dim] arrays (input order) and a 'was chunked' flag per protein."""
        cfg = self.cfg
        lengths = np.array([len(t) for t in token_arrays])
        results: list[np.ndarray | None] = [None] * len(token_arrays)
        chunked = lengths > cfg.chunk_residues if cfg.chunk_residues > 0 else np.zeros(len(lengths), bool)
        for i in np.flatnonzero(chunked):
            results[i] = self._embed_long(np.asarray(token_arrays[i]))
        short = np.flatnonzero(~chunked)
        for batch in plan_batches(lengths[short], cfg.batch_residues, cfg.max_batch_size):
            rows = short[batch]
            for i, out in zip(rows, self._forward([token_arrays[i] for i in rows])):
                results[i] = out
        return results, chunked


def embed_table(batcher: BatchEmbedder, table: pa.Table) -> pa.Table:
    """Input shard rows (with `tokens`) -> embedding rows (labels carried through)."""
    if "tokens" not in table.column_names:
        raise FinetuneError("input shards have no `tokens` column (use a data_prep output)")
    flat, offsets, _ = residue_arrays(table.column("tokens"), np.uint8)
    token_arrays = [flat[offsets[i]:offsets[i + 1]] for i in range(table.num_rows)]
    if any(len(t) == 0 for t in token_arrays):
        raise FinetuneError("input shards contain an empty sequence (data_prep should have rejected it)")
    outputs, chunked = batcher.embed(token_arrays)
    dim = batcher.embedder.dim
    pooled = np.stack([o.mean(axis=0) for o in outputs]).astype(np.float32)
    columns = {
        "id": table.column("id"),
        "length": pa.array([len(t) for t in token_arrays], pa.int32()),
        "embedding": pa.array([o.astype(np.float16).tobytes() for o in outputs], pa.large_binary()),
        "pooled": pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1)), dim).cast(pa.list_(pa.float32())),
        "chunked": pa.array(chunked.tolist(), pa.bool_()),
    }
    for name in table.column_names:
        if name not in DROPPED_COLUMNS and name not in columns:
            columns[name] = table.column(name)
    return pa.table(columns)


class _EmbedActor:
    """Ray Data actor: one embedder loaded once, then fed blocks of rows."""

    def __init__(self, model: str, cfg: dict, device: str):
        self.batcher = BatchEmbedder(load_embedder(model, device), EmbedConfig(**cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_table(self.batcher, batch)


REDUCED_HDF5 = "reduced_embeddings_file.h5"  # bio_embeddings' name for per-protein vectors


def _h5_key(pid: str) -> str:
    return pid.replace("/", "_")  # '/' would make an HDF5 group; original_id keeps the real id


class EmbeddingWriter:
    """Streams embedding rows into part-*.parquet files, the reduced HDF5 file and optionally the
    per-residue HDF5 file."""

    def __init__(self, out: Path, rows_per_shard: int, hdf5: str | None):
        self.out, self.rows_per_shard = Path(out), rows_per_shard
        self.data = self.out / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        for old in self.data.glob("part-*.parquet"):
            old.unlink()
        self.shard, self.writer, self.in_shard = 0, None, 0
        self.rows = self.residues = self.chunked = 0
        import h5py

        self.h5 = None
        if hdf5:
            Path(hdf5).parent.mkdir(parents=True, exist_ok=True)
            self.h5 = h5py.File(hdf5, "w")
        self.reduced = h5py.File(self.out / REDUCED_HDF5, "w")

    def write(self, table: pa.Table, dim: int) -> None:
        start = 0
        while start < table.num_rows:
            if self.writer is None:
                path = self.data / f"part-{self.shard:05d}.parquet"
                self.writer = pq.ParquetWriter(path, table.schema)
            take = min(self.rows_per_shard - self.in_shard, table.num_rows - start)
            self.writer.write_table(table.slice(start, take), row_group_size=256)
            start += take
            self.in_shard += take
            if self.in_shard >= self.rows_per_shard:
                self._roll()
        self.rows += table.num_rows
        self.residues += int(pa.compute.sum(table.column("length")).as_py() or 0)
        self.chunked += int(pa.compute.sum(table.column("chunked").cast(pa.int32())).as_py() or 0)
        ids = table.column("id").to_pylist()
        pooled = table.column("pooled").to_numpy(zero_copy_only=False)
        for pid, vector in zip(ids, pooled):
            self.reduced.create_dataset(_h5_key(pid), data=np.asarray(vector, np.float32)).attrs["original_id"] = pid
        if self.h5 is not None:
            for pid, length, emb, vector in zip(ids, table.column("length").to_pylist(),
                                                table.column("embedding").to_pylist(), pooled):
                ds = self.h5.create_dataset(_h5_key(pid), data=np.frombuffer(emb, np.float16).reshape(length, dim))
                ds.attrs["original_id"] = pid
                ds.attrs["pooled"] = np.asarray(vector, np.float32)

    def _roll(self):
        if self.writer is not None:
            self.writer.close()
            self.writer, self.in_shard = None, 0
            self.shard += 1

    def close(self):
        self._roll()
        self.reduced.close()
        if self.h5 is not None:
            self.h5.close()


def actor_pool_size(wanted: int, cpus: float) -> int:
    """Actors (one CPU each) that leave a CPU for Ray Data's Parquet read tasks: an actor pool that
    takes every CPU waits forever for rows that no read task can be scheduled to produce."""
    if cpus < 2:
        raise FinetuneError(f"embedding through Ray needs at least 2 CPUs (one actor, one for reading); this Ray "
                            f"has {cpus:g}: start it with --num-cpus 2 or more, or embed with --local")
    size = min(wanted, int(cpus) - 1)
    if size < wanted:
        print(f"[finetune] embed.num_actors {wanted} -> {size}: {cpus:g} CPUs, one left for the Parquet reads",
              flush=True)
    return size


def _ray_batches(model: str, data_dir: Path, cfg: EmbedConfig, columns: list[str]):
    import ray

    ensure_ray(log_to_driver=False)
    use_gpu = cfg.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    actors = actor_pool_size(cfg.num_actors, ray.cluster_resources().get("CPU", 0))
    # No global sort: each actor call plans length-sorted residue-budget batches inside its
    # rows_per_task rows, which gives the same padding waste without a shuffle stage.
    ds = ray.data.read_parquet([str(p) for p in data_files(data_dir)], columns=columns)
    ds = ds.map_batches(
        _EmbedActor, fn_constructor_kwargs={"model": model, "cfg": asdict(cfg),
                                            "device": "cuda" if use_gpu else "cpu"},
        batch_size=cfg.rows_per_task, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0, num_cpus=1)
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def local_device(cfg: EmbedConfig) -> str:
    """Where `--local` embeds: embed.use_gpu None means when this process sees a GPU, as it means
    when the cluster has one under Ray (before, None embedded on the CPU beside an idle GPU)."""
    wanted = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    return "cuda" if wanted and torch.cuda.is_available() else "cpu"


def _local_batches(model: str, data_dir: Path, cfg: EmbedConfig, columns: list[str]):
    batcher = BatchEmbedder(load_embedder(model, local_device(cfg)), cfg)
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in data_files(data_dir)])
    table = table.take(pa.compute.sort_indices(table, [("length", "ascending")]))
    for start in range(0, table.num_rows, cfg.rows_per_task):
        yield embed_table(batcher, table.slice(start, cfg.rows_per_task))


def run_embed(model: str, data_dir: str | Path, out: str | Path, cfg: EmbedConfig | None = None,
              hdf5: str | None = None, use_ray: bool = True) -> dict:
    """Embed every row of shard dir `data_dir` with `model` into shard dir `out`; returns the manifest."""
    cfg = cfg or EmbedConfig()
    data_dir, out = Path(data_dir), Path(out)
    try:
        source = check_schema(data_dir)
        schema = pq.read_schema(data_files(data_dir)[0])
    except (DataPrepError, FileNotFoundError) as err:
        raise FinetuneError(str(err)) from None
    columns = [c for c in schema.names if c not in DROPPED_COLUMNS or c == "tokens"]
    dim = load_embedder(model, "cpu").dim if model == "onehot" else None
    writer = EmbeddingWriter(out, cfg.rows_per_shard, hdf5)
    t0 = time.perf_counter()
    try:
        batches = (_ray_batches if use_ray else _local_batches)(model, data_dir, cfg, columns)
        progress = CountProgress(source["rows"], f"embedding {data_dir.name}", log)
        for batch in batches:
            progress.add(batch.num_rows)
            if batch.num_rows == 0:
                continue
            dim = dim or len(batch.column("pooled")[0])
            writer.write(batch, dim)
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    if writer.rows != source["rows"]:
        raise FinetuneError(f"{out}: wrote {writer.rows} rows but {data_dir} has {source['rows']}")
    return write_manifest(
        out, kind="embeddings", rows=writer.rows, residues=writer.residues, sources=[str(data_dir)],
        rejected={}, input_records=source["rows"], dim=dim, dtype="float16",
        embedding_layout="large_binary float16 [length, dim] row-major; pooled = mean over residues",
        model=describe(model), model_path=str(model), source_kind=source.get("kind"),
        chunked=writer.chunked, chunk_residues=cfg.chunk_residues, seconds=round(seconds, 2),
        hdf5=str(hdf5) if hdf5 else None, reduced_hdf5=REDUCED_HDF5)
