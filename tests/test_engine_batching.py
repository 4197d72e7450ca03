"""Residue-budget batching and epoch plans on the real corpus lengths: padding, budget, coverage,
equal steps on every rank, 1/world of the row groups per rank, determinism, resume position."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.fasta_read import fasta_lengths
from engine.batching import make_pieces, pack_batches, pad_stack
from engine.epoch import PlanSettings, plan_epoch, plan_lengths
from engine.sources import Source, SourceIndex

SETTINGS = PlanSettings(residues_per_batch=8192, max_batch_size=256, max_length=512, long_proteins="window",
                        bucket_ratio=1.05, min_length=1, window_chunks=8)


@pytest.fixture(scope="module")
def corpus_lengths(shared_data):
    return fasta_lengths(shared_data / "corpus" / "corpus_dedup.fasta")


def synthetic_index(lengths: np.ndarray, group_rows: int = 512) -> tuple[SourceIndex, callable]:
    """A source over `lengths` in row groups of `group_rows` (no files: lengths come from memory)."""
    first = np.arange(0, len(lengths), group_rows)
    rows = np.minimum(group_rows, len(lengths) - first)
    index = SourceIndex(Source("synthetic", []), None, ["synthetic.parquet"], np.zeros(len(first), int),
                        np.arange(len(first)), first, rows)
    return index, lambda ix, c: lengths[ix.first_row[c]:ix.first_row[c] + ix.rows[c]]


def plans(lengths, world: int, epoch: int = 0, seed: int = 0, group_rows: int = 512):
    """The plans of all ranks, with the all-reduce done by hand (each rank's own count first)."""
    index, read = synthetic_index(lengths, group_rows)
    own = [plan_epoch([index], [1.0], 0, SETTINGS, seed=seed, epoch=epoch, rank=r, world=world, read_lengths=read,
                      fillers=False).own_batches for r in range(world)]
    agree = lambda values, op: [max(own)] if op == "max" else values  # noqa: E731
    return [plan_epoch([index], [1.0], 0, SETTINGS, seed=seed, epoch=epoch, rank=r, world=world, read_lengths=read,
                       agree=agree) for r in range(world)], index


def test_padding_efficiency_and_budget_on_real_corpus(corpus_lengths):
    assert len(corpus_lengths) == 44331
    plan = plan_lengths(corpus_lengths, SETTINGS, seed=1)
    assert plan.padding_efficiency >= 0.9
    batches = [w.batch(b)[2] for w in plan.windows for b in range(len(w))]
    assert all(x.max() * len(x) <= 8192 and len(x) <= 256 and x.max() <= 512 for x in batches)
    assert plan.stats.long_proteins == int((corpus_lengths > 512).sum()) > 0
    assert sum(int(x.sum()) for x in batches) == int(corpus_lengths.sum())  # window mode: every residue


def test_pack_batches_uses_every_piece_once_under_the_budget(corpus_lengths):
    lengths = np.minimum(corpus_lengths[:4096], 512)
    batches = pack_batches(lengths, 8192, 64, 1.05, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(4096))
    assert all(lengths[b].max() * len(b) <= 8192 and len(b) <= 64 for b in batches)


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
def test_every_rank_gets_the_same_number_of_batches_and_its_own_row_groups(corpus_lengths, world):
    lengths = corpus_lengths[:20000]
    ranks, index = plans(lengths, world, epoch=2, seed=3, group_rows=256)
    assert len({p.batches for p in ranks}) == 1
    # every piece of the epoch is trained exactly once across ranks; the fillers are flagged
    seen = []
    for p in ranks:
        for w in p.windows:
            first = {g: index.first_row[g] for g in w.groups}
            offsets = np.cumsum([0] + [index.rows[g] for g in w.groups])
            for b in range(len(w)):
                if w.repeated[b]:
                    continue
                pieces, starts, _ = w.batch(b)
                chunk = np.searchsorted(offsets, pieces, side="right") - 1
                rows = [first[w.groups[c]] + r - offsets[c] for c, r in zip(chunk, pieces)]
                seen += list(zip(rows, starts.tolist()))
    pieces, _ = make_pieces(lengths, 512)
    assert sorted(seen) == sorted(zip(pieces.rows.tolist(), pieces.starts.tolist()))
    # each rank reads its own row groups: about 1/world of them, no two ranks the same
    groups = [sorted(g for w in p.windows for g in w.groups) for p in ranks]
    assert sum(len(g) for g in groups) == len(index.rows)
    assert max(len(g) for g in groups) <= -(-len(index.rows) // world)


def test_plan_is_deterministic_per_seed_and_epoch_and_resumes_mid_window(corpus_lengths):
    lengths = corpus_lengths[:3000]
    (a,), _ = plans(lengths, 1, seed=5, epoch=1, group_rows=128)
    (b,), _ = plans(lengths, 1, seed=5, epoch=1, group_rows=128)
    (c,), _ = plans(lengths, 1, seed=5, epoch=2, group_rows=128)
    assert len(a.windows) == 3
    flat = lambda p: [w.batch(b)[0].tolist() for w in p.windows for b in range(len(w))]  # noqa: E731
    assert flat(a) == flat(b) and flat(a) != flat(c)
    # resuming at batch k keeps exactly the batches from k on
    k = len(a.windows[0]) + 3
    rest = a.from_batch(k)
    assert rest[0].first_batch + rest[0].skip == k
    assert sum(len(w) - w.skip for w in rest) == a.batches - k


def test_pad_stack():
    out = pad_stack([np.array([1, 2, 3]), np.array([4])], 0)
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_windows_stop_at_the_byte_limit_but_hold_at_least_one_draw():
    from dataclasses import replace

    from engine.epoch import window_bounds

    mb = 2**20
    s = replace(SETTINGS, window_chunks=3, window_mb=100)
    # small draws: the chunk count decides; wide ones (per-residue embeddings): the bytes
    assert window_bounds([mb] * 7, s) == [(0, 3), (3, 6), (6, 7)]
    assert window_bounds([60 * mb, 60 * mb, 30 * mb, 200 * mb, 10 * mb], s) == [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert window_bounds([], s) == []
