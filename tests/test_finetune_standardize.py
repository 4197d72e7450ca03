"""Per-dimension standardisation of the heads' inputs: statistics from the training rows only,
applied to every batch, saved with the head and reused when a saved head is applied later."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.checkpoint import latest_checkpoint
from finetune.data import load_embeddings
from finetune.experiment import load_head, predict, train_head
from finetune.standardize import MIN_STD, feature_stats, standardize
from finetune.task import HeadTask
from test_finetune_train import head_cfg, small_deeploc_embeddings


@pytest.fixture(scope="module")
def small_deeploc(shared_data, tmp_path_factory):
    return small_deeploc_embeddings(shared_data, tmp_path_factory.mktemp("small_deeploc"))


def _rows(path: str) -> list[dict]:
    """Rows of an embedding shard dir as the engine hands them to collate (binary cells as uint8)."""
    rows = pq.read_table(next((Path(path) / "data").glob("*.parquet"))).to_pylist()
    for r in rows:
        r["embedding"] = np.frombuffer(r["embedding"], np.uint8)
    return rows


def test_statistics_come_from_the_training_rows_only(small_deeploc):
    data = load_embeddings(small_deeploc["train"])
    la = HeadTask(head_cfg(train=small_deeploc["train"]))
    keep, held, _ = la.split
    assert len(keep) == 378 and len(held) == 42  # 420 proteins, 10% stratified hold-out
    residues = np.concatenate([data.residues[i] for i in keep]).astype(np.float64)
    stats = la.stats
    assert stats["count"] == len(residues) == int(data.lengths[keep].sum())
    np.testing.assert_allclose(stats["mean"], residues.mean(0), rtol=0, atol=1e-12)
    std = residues.std(0)
    assert std[20] == 0 and stats["scale"][20] == 1.0  # no X/U/O/B/Z residue in these training proteins: kept unscaled
    np.testing.assert_allclose(stats["scale"][:20], std[:20], rtol=1e-9)
    # the held-out rows are not part of them: the statistics of all rows differ
    every = feature_stats(small_deeploc["train"], None, "embedding", 21)
    assert every["count"] == int(data.lengths.sum()) and np.abs(np.subtract(every["mean"], stats["mean"])).max() > 1e-4
    # the mean-pool MLP standardises the pooled vectors, with their own per-protein statistics
    mlp = HeadTask(head_cfg("model.head=mlp", train=small_deeploc["train"]))
    np.testing.assert_allclose(mlp.stats["mean"], data.pooled[keep].astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(mlp.stats["scale"][:20], data.pooled[keep].astype(np.float64).std(0)[:20], rtol=1e-6)


def test_constant_dimensions_are_centred_not_divided_by_zero(small_deeploc):
    data = load_embeddings(small_deeploc["train"])
    one = np.array([0])  # a single protein: residue types it lacks are constant zero columns
    stats = feature_stats(small_deeploc["train"], one, "embedding", 21)
    absent = data.residues[0].max(0) == 0
    assert absent.sum() >= 2
    assert np.all(np.asarray(stats["scale"])[absent] == 1.0) and np.all(np.asarray(stats["mean"])[absent] == 0.0)
    assert np.all(np.asarray(stats["scale"])[~absent] >= MIN_STD)
    x = standardize(data.residues[0], stats)
    assert np.isfinite(x).all() and np.all(x[:, absent] == 0)
    np.testing.assert_allclose(x[:, ~absent].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(x[:, ~absent].std(0), 1, atol=1e-5)


def test_saved_head_applies_its_training_statistics_later(small_deeploc, tmp_path):
    cfg = head_cfg("train.max_epochs=1", "data.max_length=400", f"ray.storage_path={tmp_path}", "ray.name=la",
                   train=small_deeploc["train"])
    train_head(cfg, local=True)
    config = json.loads((latest_checkpoint(tmp_path / "la") / "config.json").read_text())
    trained_with = HeadTask(cfg).stats
    assert config["standardize"] == trained_with and config["class_weights"] == {}
    # applied later, against another data.train: the head keeps the statistics it was trained with
    task, model, _ = load_head(tmp_path / "la", replace(cfg, data=replace(cfg.data, train=small_deeploc["test"])))
    assert task.stats == trained_with != HeadTask(replace(cfg, data=replace(cfg.data, train=small_deeploc["test"]))).stats
    rows = _rows(small_deeploc["test"])[:3]
    lengths = np.array([r["length"] for r in rows])
    batch = task.collate_eval(rows, np.zeros(3, np.int64), lengths, np.random.default_rng(0))
    x = batch["x"].transpose(1, 2).numpy()
    for i, row in enumerate(rows):
        emb = row["embedding"].view(np.float16).reshape(-1, 21)
        expected = (emb.astype(np.float32) - np.float32(trained_with["mean"])) / np.float32(trained_with["scale"])
        np.testing.assert_allclose(x[i, : lengths[i]], expected, rtol=1e-6)
        assert not x[i, lengths[i]:].any()  # padding stays zero
    preds = predict(task, model, small_deeploc["test"], cfg)
    assert len(preds) == 139 and all(0 <= p["location"][1] < 10 for p in preds)


def test_standardize_off_feeds_the_embeddings_unchanged(small_deeploc):
    task = HeadTask(head_cfg("model.standardize=false", train=small_deeploc["train"]))
    assert task.stats is None and task.export_config()["standardize"] is None
    rows = _rows(small_deeploc["train"])[:2]
    lengths = np.array([r["length"] for r in rows])
    x = task.collate_eval(rows, np.zeros(2, np.int64), lengths, np.random.default_rng(0))["x"].transpose(1, 2).numpy()
    np.testing.assert_array_equal(x[0, : lengths[0]], rows[0]["embedding"].view(np.float16).reshape(-1, 21))


def test_mlp_batches_carry_the_pooled_vectors_through_the_engine(small_deeploc):
    from engine.loop import EVAL_EPOCH
    from engine.sources import Mixture
    from engine.stream import Feed

    task = HeadTask(head_cfg("model.head=mlp", "model.standardize=false", train=small_deeploc["train"]))
    _, held, _ = task.split
    feed = Feed(Mixture(task.eval_data()), task.cfg, task, rank=0, world=1, training=False)
    pooled = np.concatenate([b.tensors["pooled"].numpy() for b in feed.batches(feed.plan(EVAL_EPOCH), EVAL_EPOCH)])
    expected = load_embeddings(small_deeploc["train"], False).pooled[held]
    assert pooled.shape == expected.shape == (42, 21)
    np.testing.assert_allclose(pooled.sum(0), expected.sum(0), rtol=1e-5)  # batches are length-sorted: compare sums
