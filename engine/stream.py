"""Planned windows -> ready batches, through Ray Data (or in-process without Ray).

`read_window` turns one planned window into its batches: it reads the window's row groups (only
the columns the task needs), and calls `Task.collate` for each planned batch with an rng seeded
by (seed, epoch, batch index, rank), so a batch is the same wherever and whenever it is made.

Under Ray, `ray_batches` makes each window one row of a Ray Data dataset and `read_window` a
`map_batches` generator: Ray Data schedules the reading, decoding and collation as tasks on any
node's CPUs, streams the batches back in plan order (preserve_order), and bounds what is in
flight (at most `data.read_tasks` windows being read and `data.buffer_mb` of finished batches in
the object store), so a training worker's memory does not grow with the corpus. Each rank streams
its own plan rather than `streaming_split`ting one dataset: the split of Ray Data is dynamic, and
resume needs every rank to see exactly its planned batches in order.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .epoch import EpochPlan, Window, plan_epoch, settings_from
from .sources import SourceIndex, open_source, row_dicts


@dataclass
class ReadyBatch:
    index: int  # position in the rank's epoch
    repeated: bool  # a filler (equal step counts); evaluation skips it
    residues: int
    padded: int
    tensors: dict


@dataclass
class WindowReader:
    """What reading a window needs, small enough to ship to Ray Data tasks with each window."""
    task: object  # the stage's Task (its collate)
    filesystems: list  # per source: pyarrow filesystem
    columns: list[list[str]]  # per source: columns to read
    seed: int
    epoch: int
    rank: int
    training: bool  # Task.collate, else Task.collate_eval

    @classmethod
    def create(cls, task, indexes: list[SourceIndex], seed: int, epoch: int, rank: int,
               training: bool) -> "WindowReader":
        # "length" was read when planning; batches carry the piece lengths
        return cls(task, [ix.fs for ix in indexes], [list(ix.source.columns) for ix in indexes], seed, epoch, rank,
                   training)

    def __call__(self, window: Window) -> Iterator[ReadyBatch]:
        rows: list[dict] = []
        files: dict[str, pq.ParquetFile] = {}
        groups: dict[tuple[str, int], pa.Table] = {}  # a shuffle_rows source touches a group several times
        for s, path, group, picks in zip(window.sources, window.paths, window.groups, window.picks):
            if path not in files:
                files[path] = pq.ParquetFile(self.filesystems[s].open_input_file(path))
            if (path, group) not in groups:
                groups[path, group] = files[path].read_row_group(group, columns=self.columns[s])
            table = groups[path, group]
            if picks is not None:
                table = table.take(pa.array(picks))
            rows.extend(row_dicts(table, s))
        collate = self.task.collate if self.training else self.task.collate_eval
        for b in range(window.skip, len(window)):
            index = window.first_batch + b
            pieces, starts, lengths = window.batch(b)
            rng = np.random.default_rng([self.seed, self.epoch, index, self.rank])
            tensors = collate([rows[r] for r in pieces], starts.astype(np.int64), lengths.astype(np.int64), rng)
            yield ReadyBatch(index, bool(window.repeated[b]), int(lengths.sum()), int(lengths.max()) * len(lengths),
                             tensors)


def local_batches(windows: list[Window], reader: WindowReader) -> Iterator[ReadyBatch]:
    """In this process, window after window (the plain, Ray-free path)."""
    for window in windows:
        yield from reader(window)


def ray_batches(windows: list[Window], reader: WindowReader, *, read_tasks: int, read_cpus: float,
                buffer_mb: int, prefetch_batches: int) -> Iterator[ReadyBatch]:
    """The same batches, made by Ray Data tasks and streamed back in plan order."""
    import ray.data

    if not windows:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=buffer_mb * 2**20)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    def make(batch: pa.Table) -> Iterator[pa.Table]:
        for blob in batch.column("window").to_pylist():
            for ready in reader(pickle.loads(blob)):
                yield pa.table({"batch": pa.array([pickle.dumps(ready, protocol=5)], pa.large_binary())})

    items = [{"window": pickle.dumps(w, protocol=5)} for w in windows]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(make, batch_size=1, batch_format="pyarrow", concurrency=read_tasks, num_cpus=read_cpus)
    blocks = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_batches))
    try:
        for block in blocks:
            for blob in block.column("batch").to_pylist():
                yield pickle.loads(blob)
    finally:
        blocks.close()  # a run that stops mid-epoch shuts the pipeline down now, not at exit


class Feed:
    """A task's sources, planned epoch by epoch and streamed to this rank (training: equal batch
    counts on every rank and `Task.collate`; evaluation: each rank its own share, `collate_eval`)."""

    def __init__(self, mixture, cfg, task, *, rank: int, world: int, agree=None, use_ray: bool = False,
                 training: bool = True):
        self.indexes = [open_source(s, cfg.data.limit) for s in mixture.sources]
        self.weights = [s.weight for s in mixture.sources]
        self.proteins = mixture.proteins
        self.settings = settings_from(cfg)
        self.data_cfg, self.task, self.seed = cfg.data, task, cfg.train.seed
        self.rank, self.world, self.agree, self.use_ray, self.training = rank, world, agree, use_ray, training

    def plan(self, epoch: int) -> EpochPlan:
        return plan_epoch(self.indexes, self.weights, self.proteins, self.settings, seed=self.seed, epoch=epoch,
                          rank=self.rank, world=self.world, agree=self.agree, fillers=self.training)

    def batches(self, plan: EpochPlan, epoch: int, start: int = 0) -> Iterator[ReadyBatch]:
        """This rank's batches of `plan` from batch `start` on, in plan order."""
        reader = WindowReader.create(self.task, self.indexes, self.seed, epoch, self.rank, self.training)
        windows = plan.from_batch(start)
        if not self.use_ray:
            return local_batches(windows, reader)
        d = self.data_cfg
        return ray_batches(windows, reader, read_tasks=d.read_tasks, read_cpus=d.read_cpus, buffer_mb=d.buffer_mb,
                           prefetch_batches=d.prefetch_batches)
