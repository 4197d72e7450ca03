"""Statistics of the training rows that the heads normalise with: per-dimension mean and scale of
the input features, and class weights of the disorder labels.

Why standardise: a head sees its input through a linear layer or a convolution, whose initial
weights assume features of unit scale. A small language model's embeddings can be nearly constant
(the demo biLSTM's pooled vectors: std 0.01-0.05 per dimension on an offset of about 0.9), so the
signal is a tiny ripple on a large offset and LA or the MLP fall back to the majority class.

Both are computed from the training rows only (the hold-out removed; never validation or test
rows), streamed one row group at a time, and travel with the trained head in its export's
config.json, so a saved head applied later normalises exactly as it did in training.
"""
from __future__ import annotations

import numpy as np

from engine.sources import Source, open_source, residue_arrays

MIN_STD = 1e-6  # a dimension with less spread (constant in training, e.g. an unused one-hot column) keeps scale 1


def _feature_blocks(path: str, rows: np.ndarray | None, column: str, dim: int):
    """[n, dim] float64 arrays of `column` ("embedding": one row per residue; "pooled": per protein)."""
    index = open_source(Source(path, [column], rows=rows))
    cache: dict = {}
    for chunk in range(len(index.rows)):
        picked = index.selected_rows(chunk)
        if not len(picked):
            continue
        cells = index.read(chunk, [column], cache).column(column).take(picked)
        if column == "embedding":
            yield residue_arrays(cells, np.float16)[0].reshape(-1, dim).astype(np.float64)
        else:
            yield np.stack(cells.to_numpy(zero_copy_only=False)).astype(np.float64).reshape(-1, dim)


def feature_stats(path: str, rows: np.ndarray | None, column: str, dim: int) -> dict:
    """{"mean": [dim], "scale": [dim], "count": n} of `column` over rows `rows` (None = all) of shard
    dir `path`. scale = standard deviation, 1 where it is below MIN_STD (so constant dimensions are
    centred, never divided by zero). Chunks are merged with Chan's pairwise update: exact for
    features with a large offset and a small spread, where sum-of-squares loses the spread."""
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for x in _feature_blocks(path, rows, column, dim):
        n, m = len(x), x.mean(axis=0)
        delta = m - mean
        m2 += ((x - m) ** 2).sum(axis=0) + delta ** 2 * count * n / (count + n)
        mean += delta * n / (count + n)
        count += n
    std = np.sqrt(m2 / count) if count else np.zeros(dim)
    scale = np.where(std < MIN_STD, 1.0, std)
    return {"mean": mean.tolist(), "scale": scale.tolist(), "count": count}


def standardize(x: np.ndarray, stats: dict | None) -> np.ndarray:
    """(x - mean) / scale over the last axis, float32; x unchanged when `stats` is None."""
    if stats is None:
        return x.astype(np.float32, copy=False)
    return ((x.astype(np.float32) - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["scale"], np.float32))


def class_weights(path: str, rows: np.ndarray | None, column: str, classes: int) -> list[float] | None:
    """Inverse-frequency weights n / (classes * n_c) of a per-residue label column over rows `rows`
    (labels < 0 ignored); None when a class never occurs (nothing to balance against)."""
    index = open_source(Source(path, [column], rows=rows))
    counts = np.zeros(classes, np.int64)
    cache: dict = {}
    for chunk in range(len(index.rows)):
        picked = index.selected_rows(chunk)
        if len(picked):
            flat = residue_arrays(index.read(chunk, [column], cache).column(column).take(picked), np.int8)[0]
            counts += np.bincount(flat[flat >= 0], minlength=classes)[:classes]
    if (counts == 0).any():
        return None
    return (counts.sum() / (classes * counts)).tolist()
