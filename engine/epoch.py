"""One rank's plan of one epoch: which row groups it reads, in which windows, as which batches.

The SeqVec recipe at any scale, without a global shuffle of rows:
1. Draws: each source gives its share of the epoch (by weight; `Mixture.proteins` in all, or
   every row once) as whole row groups in a fresh random order, cycled when the share exceeds
   the source; the last row group of a share gives a random subset of its rows. (A small source
   whose rows are sorted, e.g. by class, can ask for rows in random order instead.)
2. The draws of all sources are shuffled together and dealt to the ranks in that order, each to
   the rank with the fewest bytes so far: a rank reads about 1/world of the bytes, one row group
   at a time.
3. A rank's draws are cut into windows of `data.window_chunks` row groups (fewer where they would
   pass `data.window_mb`). Inside a window,
   long proteins become pieces and pieces are packed by length under the residue budget
   (engine.batching). Reading a window's `length` column is all the planning reads.
4. Every rank must take the same number of steps: the ranks agree on the largest batch count
   (one all-reduce) and a rank with fewer repeats batches of its last window, flagged `repeated`.

Everything is a function of (seed, epoch, rank, world) and the data, so a resumed run rebuilds
the same plan and skips the batches it has already trained on: Ray Data keeps no iterator
position, so the position is (epoch, batch index) in this plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .batching import PieceStats, make_pieces, pack_batches
from .sources import DataError, SourceIndex


@dataclass
class Window:
    """Row groups read together and the batches packed from their rows.

    Rows of the window are the selected rows of its chunks, concatenated in chunk order. The
    batches are stored flat (a plan holds one entry per piece of the rank's epoch, so it stays
    compact): batch b is pieces `bounds[b]:bounds[b+1]` of (`rows`, `starts`, `lengths`)."""
    sources: list[int]  # per chunk: source position
    paths: list[str]  # per chunk: Parquet file
    groups: list[int]  # per chunk: row group in that file
    picks: list[np.ndarray | None]  # per chunk: rows used (None = all)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # per piece: row in the window
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # per piece: first residue
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # per piece: residues
    bounds: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # batch b = pieces bounds[b]:bounds[b+1]
    repeated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per batch: a filler (equal step counts)
    first_batch: int = 0  # index of this window's first batch in the rank's epoch
    skip: int = 0  # batches already trained on (a resumed run starts inside this window)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, starts, lengths) of the pieces of batch b."""
        lo, hi = self.bounds[b], self.bounds[b + 1]
        return self.rows[lo:hi], self.starts[lo:hi], self.lengths[lo:hi]

    def add_batches(self, order: np.ndarray, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                    sizes: np.ndarray, repeated: bool) -> None:
        """Append batches: pieces `order` (batch after batch, `sizes` pieces each)."""
        self.rows = np.concatenate([self.rows, rows[order].astype(np.int32)])
        self.starts = np.concatenate([self.starts, starts[order].astype(np.int32)])
        self.lengths = np.concatenate([self.lengths, lengths[order].astype(np.int32)])
        self.bounds = np.concatenate([self.bounds, self.bounds[-1] + np.cumsum(sizes)])
        self.repeated = np.concatenate([self.repeated, np.full(len(sizes), repeated)])


@dataclass
class EpochPlan:
    windows: list[Window]
    batches: int  # batches of this rank (equal on every rank)
    own_batches: int  # before filler batches
    stats: PieceStats  # pieces of all ranks
    residues: int  # real residues in all ranks' batches (fillers excluded)
    padded: int  # padded positions of those batches

    @property
    def padding_efficiency(self) -> float:
        return self.residues / max(1, self.padded)

    def from_batch(self, start: int) -> list[Window]:
        """The windows still to train on when `start` batches are done (a resumed run)."""
        out = []
        for w in self.windows:
            if w.first_batch + len(w) <= start:
                continue
            w.skip = max(0, start - w.first_batch)
            out.append(w)
        return out


@dataclass
class PlanSettings:
    residues_per_batch: int
    max_batch_size: int
    max_length: int
    long_proteins: str
    bucket_ratio: float
    min_length: int
    window_chunks: int
    window_mb: int = 256


Entry = tuple[int, int, "np.ndarray | None"]  # (source, chunk, rows in the chunk or None = all)


def draw_chunks(indexes: list[SourceIndex], weights: list[float], proteins: int,
                rng: np.random.Generator) -> list[list[Entry]]:
    """The draws of one epoch, shuffled across sources; a draw is about one row group of rows.

    A source's share is its row groups in a random order (cycled when the share exceeds the
    source; the last one gives a random subset). A `shuffle_rows` source instead gives its rows
    in a random order, cut into draws the size of its row groups, each draw spanning several."""
    sizes = np.array([ix.selected_counts().sum() for ix in indexes], dtype=np.int64)
    if proteins:
        w = np.asarray(weights, dtype=np.float64)
        share = np.floor(w / w.sum() * proteins).astype(np.int64)
        share[np.argmax(w)] += proteins - share.sum()
    else:
        share = sizes
    draws: list[list[Entry]] = []
    for s, (ix, n) in enumerate(zip(indexes, share)):
        if not sizes[s] or not n:
            continue
        if ix.source.shuffle_rows:
            draws += _row_draws(s, ix, int(n), rng)
            continue
        usable = np.flatnonzero(ix.selected_counts())
        left = int(n)
        while left > 0:
            for c in rng.permutation(usable):
                rows = ix.selected_rows(c)
                if left >= len(rows):
                    draws.append([(s, int(c), None if ix.picked is None else rows)])
                    left -= len(rows)
                else:
                    draws.append([(s, int(c), np.sort(rng.choice(rows, left, replace=False)))])
                    left = 0
                if left == 0:
                    break
    return [draws[i] for i in rng.permutation(len(draws))]


def _row_draws(s: int, ix: SourceIndex, n: int, rng: np.random.Generator) -> list[list[Entry]]:
    counts = ix.selected_counts()
    chunk_of = np.repeat(np.arange(len(counts)), counts)  # selected rows, chunk by chunk
    local = np.concatenate([ix.selected_rows(c) for c in range(len(counts))])
    reps = -(-n // len(local))
    order = np.concatenate([rng.permutation(len(local)) for _ in range(reps)])[:n]
    size = max(1, int(np.median(ix.rows)))
    draws = []
    for start in range(0, n, size):
        take = order[start:start + size]
        take = take[np.lexsort((local[take], chunk_of[take]))]  # read each row group once, in order
        cuts = np.flatnonzero(np.diff(chunk_of[take])) + 1
        draws.append([(s, int(chunk_of[g[0]]), local[g]) for g in np.split(take, cuts)])
    return draws


def plan_epoch(indexes: list[SourceIndex], weights: list[float], proteins: int, settings: PlanSettings, *,
               seed: int, epoch: int, rank: int, world: int,
               agree: Callable[[list[int], str], list[int]] | None = None,
               read_lengths: Callable[[SourceIndex, int], np.ndarray] | None = None,
               fillers: bool = True) -> EpochPlan:
    """This rank's windows and batches for `epoch`.

    `agree(values, op)` reduces integers over ranks ("max" or "sum"; identity on one process);
    `read_lengths(index, chunk)` reads a row group's `length` column (a parameter so benchmarks
    can plan synthetic corpora). Without `fillers` (evaluation) ranks keep their own counts."""
    agree = agree or (lambda values, op: values)
    if read_lengths is None:
        files: dict = {}  # each Parquet footer parsed once, not once per row group
        read_lengths = lambda ix, c: _read_lengths(ix, c, files)  # noqa: E731
    rng = np.random.default_rng([seed, epoch])
    draws = draw_chunks(indexes, weights, proteins, rng)
    if not draws:
        raise DataError(f"{', '.join(ix.source.path for ix in indexes)}: no rows to train on (empty shards or an "
                        "empty row selection)")
    mine = [draws[k] for k in np.flatnonzero(deal(draws, indexes, world) == rank)]
    duplicate = not mine
    if duplicate:  # fewer draws than ranks: read another rank's, its batches count as fillers
        mine = [draws[rank % len(draws)]]
    windows, stats = [], PieceStats()
    residues = padded = 0
    first = 0
    for w, (start, stop) in enumerate(window_bounds([draw_bytes(d, indexes) for d in mine], settings)):
        entries = [e for draw in mine[start:stop] for e in draw]
        window = Window([s for s, _, _ in entries], [indexes[s].files[int(indexes[s].file[c])] for s, c, _ in entries],
                        [int(indexes[s].group[c]) for s, c, _ in entries], [p for _, _, p in entries])
        lengths = np.concatenate([_pick(read_lengths(indexes[s], c), p) for s, c, p in entries])
        wrng = np.random.default_rng([seed, epoch, rank, w])
        pieces, st = make_pieces(lengths, settings.max_length, settings.long_proteins, settings.min_length, wrng)
        batches = pack_batches(pieces.lengths, settings.residues_per_batch, settings.max_batch_size,
                               settings.bucket_ratio, wrng)
        if batches:
            order, sizes = np.concatenate(batches), np.array([len(b) for b in batches])
            window.add_batches(order, pieces.rows, pieces.starts, pieces.lengths, sizes, duplicate)
            if not duplicate:
                longest = np.maximum.reduceat(pieces.lengths[order], np.cumsum(sizes) - sizes)
                residues += int(pieces.lengths.sum())
                padded += int((longest * sizes).sum())
        window.first_batch = first
        first += len(window)
        if not duplicate:
            stats.add(st)
        if len(window):
            windows.append(window)
    own = first
    total = agree([own], "max")[0] if fillers else own
    if total and not windows:
        raise DataError(f"{indexes[0].source.path}: rank {rank} has no batch of its own while other ranks have "
                        f"{total} (all its proteins shorter than data.min_length?): use fewer workers")
    if total > own:  # fillers: the last window's batches again, in order
        last = windows[-1]
        again = np.arange(total - own) % len(last)
        order = np.concatenate([np.arange(last.bounds[j], last.bounds[j + 1]) for j in again])
        last.add_batches(order, last.rows, last.starts, last.lengths, np.diff(last.bounds)[again], True)
    sums = agree([stats.proteins, stats.pieces, stats.long_proteins, stats.cropped_residues, stats.skipped_short,
                  residues, padded], "sum")
    stats = PieceStats(*sums[:5])
    return EpochPlan(windows, total, own, stats, sums[5], sums[6])


def draw_bytes(draw: list[Entry], indexes: list[SourceIndex]) -> float:
    """The bytes a draw reads (rows where the footers give no column sizes), a row selection's
    share of its row group."""
    total = 0.0
    for s, c, picks in draw:
        ix = indexes[s]
        size = ix.read_bytes(c, ix.source.columns) if ix.column_bytes else int(ix.rows[c])
        total += size if picks is None else size * len(picks) / max(1, int(ix.rows[c]))
    return total


def window_bounds(sizes: list[float], settings: PlanSettings) -> list[tuple[int, int]]:
    """[start, stop) of each window over a rank's draws: `window_chunks` draws, fewer where they
    would pass `window_mb` (a window holds at least one draw). A read task holds its window's
    data several times over while it decodes and collates; 8 row groups of 768-dimensional
    embeddings made one task 12.6 GB."""
    limit = settings.window_mb * 2**20
    bounds, start, size = [], 0, 0.0
    for k, b in enumerate(sizes):
        if k > start and (k - start == settings.window_chunks or size + b > limit):
            bounds.append((start, k))
            start, size = k, 0.0
        size += b
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


def deal(draws: list[list[Entry]], indexes: list[SourceIndex], world: int) -> np.ndarray:
    """The rank of each draw: in the (shuffled) draw order, each goes to the rank with the fewest
    bytes so far, so every rank reads within one row group of 1/world of the bytes."""
    loads = np.zeros(world)
    owner = np.empty(len(draws), dtype=np.int64)
    for k, draw in enumerate(draws):
        r = int(np.argmin(loads))
        owner[k] = r
        loads[r] += draw_bytes(draw, indexes)
    return owner


def _pick(values: np.ndarray, picks: np.ndarray | None) -> np.ndarray:
    return values if picks is None else values[picks]


def _read_lengths(index: SourceIndex, chunk: int, cache: dict) -> np.ndarray:
    return index.read(chunk, ["length"], cache).column("length").to_numpy().astype(np.int64)


def settings_from(cfg) -> PlanSettings:
    """The plan settings an ExperimentConfig's `data` section sets."""
    d = cfg.data
    return PlanSettings(d.residues_per_batch, d.max_batch_size, d.max_length, d.long_proteins, d.bucket_ratio,
                        d.min_length, d.window_chunks, d.window_mb)


def plan_lengths(lengths: np.ndarray, settings: PlanSettings, *, seed: int = 0, epoch: int = 0,
                 group_rows: int = 512) -> EpochPlan:
    """One process's plan over in-memory protein lengths laid out in row groups of `group_rows`
    (benchmarks and tests of planning without shard files)."""
    from .sources import Source

    lengths = np.asarray(lengths, dtype=np.int64)
    first = np.arange(0, len(lengths), group_rows)
    index = SourceIndex(Source("<lengths>", []), None, ["<lengths>"], np.zeros(len(first), np.int64),
                        np.arange(len(first)), first, np.minimum(group_rows, len(lengths) - first))
    return plan_epoch([index], [1.0], 0, settings, seed=seed, epoch=epoch, rank=0, world=1,
                      read_lengths=lambda ix, c: lengths[ix.first_row[c]:ix.first_row[c] + ix.rows[c]])
