"""Length-bucketed, residue-budget batches.

The SeqVec recipe: proteins of similar length go together, and a batch holds as many proteins as
fit a residue budget (padded positions = longest piece x proteins <= budget), so short proteins
come in big batches and long ones in small batches, with little padding.

Steps (engine.epoch plans an epoch with them, one window of row groups at a time):
1. `make_pieces`: proteins longer than `max_length` become pieces ("window": consecutive,
   near-equal windows covering every residue; "crop": one random window per epoch). Nothing is
   dropped silently: the counts are in `PieceStats`.
2. `pack_batches`: pieces of similar length (within `bucket_ratio`, randomly mixed) are packed
   greedily under the budget, and the batch order shuffled.
"""
from __future__ import annotations

from dataclasses import dataclass

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

    def add(self, other: "PieceStats") -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


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


def pack_batches(lengths: np.ndarray, residues_per_batch: int, max_batch_size: int,
                 bucket_ratio: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices into `lengths`, grouped into batches whose padded size fits the budget, in random order.

    Pieces are sorted by a noisy length (the length times a random factor in [1, bucket_ratio)), so
    pieces within that factor of each other mix randomly, and cut greedily: a batch grows while
    (pieces) x (largest noisy length) <= budget and pieces <= max_batch_size. The noisy length
    bounds the real one, so the budget always holds. Vectorised: one search gives every start
    its greedy end; only the walk over batch starts is a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    if lengths.max() > residues_per_batch:
        raise ValueError(f"a piece of {lengths.max()} residues exceeds the budget {residues_per_batch}")
    key = lengths * bucket_ratio ** rng.random(n)
    order = np.argsort(key, kind="stable")
    capacity = np.clip(np.floor(residues_per_batch / key[order]), 1, max_batch_size).astype(np.int64)
    # A batch [i, j) fits iff i >= j - capacity[j-1]; that bound rises strictly with j, so the
    # greedy end for start i is the number of j whose bound is <= i.
    ends = np.searchsorted(np.arange(1, n + 1) - capacity, np.arange(n), side="right").tolist()
    cuts, i = [0], 0
    while i < n:
        i = ends[i]
        cuts.append(i)
    batches = np.split(order, cuts[1:-1])
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_stack(arrays: list[np.ndarray], pad_value=0, length: int | None = None, dtype=None) -> np.ndarray:
    """Stack 1-D (or [L, ...]) arrays into [B, length, ...], padding at the end with `pad_value`."""
    length = length or max(len(a) for a in arrays)
    first = np.asarray(arrays[0])
    out = np.full((len(arrays), length, *first.shape[1:]), pad_value, dtype=dtype or first.dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out
