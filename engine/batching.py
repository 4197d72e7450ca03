"""Length-bucketed, residue-budget batches with the same number of batches on every rank.

The SeqVec recipe: proteins of similar length go together, and a batch holds as many proteins as
fit a residue budget (padded positions = longest piece x proteins <= budget), so short proteins
come in big batches and long ones in small batches, with little padding.

Steps:
1. `make_pieces`: proteins longer than `max_length` become pieces ("window": consecutive,
   near-equal windows covering every residue; "crop": one random window per epoch). Nothing is
   dropped silently: the counts are in `PieceStats`.
2. `plan_batches`: pieces are grouped into geometric length buckets (width `bucket_ratio`),
   shuffled inside each bucket, packed greedily under the budget, and the batch order shuffled.
3. `rank_batches`: the global list (identical on every rank: same seed, same lengths) is split
   round-robin; when it does not divide evenly, the first batches are repeated so that every rank
   gets exactly ceil(n / world) batches (unequal step counts would hang collective ops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Pieces:
    """Pieces of proteins: row index into the dataset, start residue and length."""
    rows: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray


@dataclass
class PieceStats:
    proteins: int = 0  # input proteins
    pieces: int = 0  # training pieces made from them
    long_proteins: int = 0  # proteins longer than max_length (windowed or cropped, never dropped)
    cropped_residues: int = 0  # residues not seen this epoch because of "crop"
    skipped_short: int = 0  # proteins shorter than min_length (counted, not trained)


@dataclass
class Batch:
    rows: np.ndarray  # dataset row of each piece
    starts: np.ndarray  # first residue of each piece
    lengths: np.ndarray  # residues of each piece
    repeated: bool = False  # a filler batch so that all ranks have the same count

    @property
    def residues(self) -> int:
        return int(self.lengths.sum())

    @property
    def padded(self) -> int:
        return int(self.lengths.max()) * len(self.lengths)


@dataclass
class EpochPlan:
    batches: list[Batch]  # this rank's batches, in order
    global_batches: int  # batches of all ranks before equalising
    stats: PieceStats = field(default_factory=PieceStats)

    @property
    def padding_efficiency(self) -> float:
        real = sum(b.residues for b in self.batches)
        return real / max(1, sum(b.padded for b in self.batches))


def make_pieces(lengths: np.ndarray, max_length: int, mode: str = "window", min_length: int = 1,
                rng: np.random.Generator | None = None) -> tuple[Pieces, PieceStats]:
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.arange(len(lengths))
    keep = lengths >= min_length
    stats = PieceStats(proteins=len(lengths), skipped_short=int((~keep).sum()))
    rows, lengths = rows[keep], lengths[keep]
    long = lengths > max_length
    stats.long_proteins = int(long.sum())
    if mode == "crop":
        rng = rng or np.random.default_rng(0)
        starts = np.zeros(len(lengths), dtype=np.int64)
        starts[long] = rng.integers(0, lengths[long] - max_length + 1)
        stats.cropped_residues = int((lengths[long] - max_length).sum())
        pieces = Pieces(rows, starts, np.minimum(lengths, max_length))
    elif mode == "window":
        # n near-equal windows instead of max_length-sized ones plus a stub: no 1-residue pieces.
        n = np.maximum(1, -(-lengths // max_length))
        rep_rows = np.repeat(rows, n)
        rep_len = np.repeat(lengths, n)
        rep_n = np.repeat(n, n)
        k = np.arange(len(rep_rows)) - np.repeat(np.cumsum(n) - n, n)  # window index in protein
        starts = (k * rep_len) // rep_n
        ends = ((k + 1) * rep_len) // rep_n
        pieces = Pieces(rep_rows, starts, ends - starts)
    else:
        raise ValueError(f"unknown long-protein mode {mode!r} (window|crop)")
    stats.pieces = len(pieces.rows)
    return pieces, stats


def plan_batches(lengths: np.ndarray, residues_per_batch: int, max_batch_size: int,
                 bucket_ratio: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices into `lengths`, grouped into batches whose padded size fits the budget."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    if lengths.max() > residues_per_batch:
        raise ValueError(f"a piece of {lengths.max()} residues exceeds the budget {residues_per_batch}")
    bucket = np.floor(np.log(np.maximum(lengths, 1)) / math.log(bucket_ratio)).astype(np.int64)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(bucket[order], kind="stable")]  # buckets ascending, random inside
    batches, current, longest = [], [], 0
    for idx in order:
        n_len = max(longest, int(lengths[idx]))
        if current and (n_len * (len(current) + 1) > residues_per_batch or len(current) >= max_batch_size):
            batches.append(np.asarray(current))
            current, n_len = [], int(lengths[idx])
        current.append(idx)
        longest = n_len
    batches.append(np.asarray(current))
    return [batches[i] for i in rng.permutation(len(batches))]


def rank_batches(batches: list, rank: int, world: int) -> tuple[list, list[bool]]:
    """This rank's share, padded by repeating early batches so every rank gets the same count."""
    if not batches:
        return [], []
    per_rank = -(-len(batches) // world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    repeated = [i >= len(batches) for i in range(per_rank * world)]
    return padded[rank::world], repeated[rank::world]


def epoch_plan(lengths: np.ndarray, *, residues_per_batch: int, max_batch_size: int, max_length: int,
               long_proteins: str = "window", bucket_ratio: float = 1.05, min_length: int = 1,
               seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1) -> EpochPlan:
    """The batches of one epoch for one rank; identical inputs give identical plans on all ranks."""
    rng = np.random.default_rng([seed, epoch])
    pieces, stats = make_pieces(lengths, max_length, long_proteins, min_length, rng)
    groups = plan_batches(pieces.lengths, residues_per_batch, max_batch_size, bucket_ratio, rng)
    mine, repeated = rank_batches(groups, rank, world)
    batches = [Batch(pieces.rows[g], pieces.starts[g], pieces.lengths[g], rep) for g, rep in zip(mine, repeated)]
    return EpochPlan(batches, len(groups), stats)


def pad_stack(arrays: list[np.ndarray], pad_value=0, length: int | None = None, dtype=None) -> np.ndarray:
    """Stack 1-D (or [L, ...]) arrays into [B, length, ...], padding at the end with `pad_value`."""
    length = length or max(len(a) for a in arrays)
    first = np.asarray(arrays[0])
    out = np.full((len(arrays), length, *first.shape[1:]), pad_value, dtype=dtype or first.dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out
