"""Residue-budget batching on the real corpus lengths: padding, budget, coverage, equal steps."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.fasta_read import fasta_lengths
from engine.batching import epoch_plan, make_pieces, pad_stack, rank_batches


@pytest.fixture(scope="module")
def corpus_lengths(shared_data):
    return fasta_lengths(shared_data / "corpus" / "corpus_dedup.fasta")


ARGS = dict(residues_per_batch=8192, max_batch_size=256, max_length=512, long_proteins="window", bucket_ratio=1.05)


def test_padding_efficiency_and_budget_on_real_corpus(corpus_lengths):
    assert len(corpus_lengths) == 44331
    plan = epoch_plan(corpus_lengths, **ARGS, seed=1)
    assert plan.padding_efficiency >= 0.9
    assert all(b.padded <= 8192 and len(b.lengths) <= 256 for b in plan.batches)
    assert all(b.lengths.max() <= 512 for b in plan.batches)
    assert plan.stats.long_proteins == int((corpus_lengths > 512).sum()) > 0


def test_window_mode_covers_every_residue_exactly_once(corpus_lengths):
    pieces, stats = make_pieces(corpus_lengths, 300, "window")
    covered = np.bincount(pieces.rows, weights=pieces.lengths, minlength=len(corpus_lengths))
    assert np.array_equal(covered.astype(int), corpus_lengths)
    assert pieces.lengths.max() <= 300 and pieces.lengths.min() >= 1
    long = corpus_lengths > 300
    assert pieces.lengths[np.isin(pieces.rows, np.flatnonzero(long))].min() >= 150  # near-equal windows, no stubs
    assert stats.pieces == len(pieces.rows) and stats.long_proteins == int(long.sum())


def test_crop_mode_counts_what_it_crops():
    lengths = np.array([10, 700, 300, 1500])
    pieces, stats = make_pieces(lengths, 500, "crop", rng=np.random.default_rng(0))
    assert list(pieces.lengths) == [10, 500, 300, 500]
    assert stats.long_proteins == 2 and stats.cropped_residues == 200 + 1000
    assert all(0 <= s <= n - m for s, n, m in zip(pieces.starts, lengths, pieces.lengths))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_rank_gets_the_same_number_of_batches(corpus_lengths, world):
    lengths = corpus_lengths[:5000]
    plans = [epoch_plan(lengths, **ARGS, seed=3, epoch=2, rank=r, world=world) for r in range(world)]
    counts = {len(p.batches) for p in plans}
    assert len(counts) == 1
    total = plans[0].global_batches
    assert counts.pop() == -(-total // world)
    # every real batch is used exactly once across ranks; the fillers are flagged
    real = [tuple(b.rows) + tuple(b.starts) for p in plans for b in p.batches if not b.repeated]
    assert len(real) == total == len(set(real))


def test_plan_is_deterministic_per_seed_and_epoch(corpus_lengths):
    lengths = corpus_lengths[:3000]
    a = epoch_plan(lengths, **ARGS, seed=5, epoch=1)
    b = epoch_plan(lengths, **ARGS, seed=5, epoch=1)
    c = epoch_plan(lengths, **ARGS, seed=5, epoch=2)
    assert all(np.array_equal(x.rows, y.rows) for x, y in zip(a.batches, b.batches))
    assert not all(np.array_equal(x.rows, y.rows) for x, y in zip(a.batches, c.batches))


def test_rank_batches_and_pad_stack():
    mine, rep = rank_batches(list("abcde"), 1, 3)
    assert mine == ["b", "e"] and rep == [False, False]
    mine, rep = rank_batches(list("abcde"), 2, 3)
    assert mine == ["c", "a"] and rep == [False, True]
    out = pad_stack([np.array([1, 2, 3]), np.array([4])], 0)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]
