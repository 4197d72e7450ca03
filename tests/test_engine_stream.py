"""The streaming training input on real shards: sources, the shard contract, equal steps under Ray
Train with a batch count that does not divide by the world size, Ray Data = in-process batches."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from _pretrain_shards import build_shards
from data_prep.shards import SCHEMA_VERSION
from engine.sources import SHARD_SCHEMA_VERSION, DataError, Source, open_source
from engine.stream import Feed
from pretrain import config as pretrain_config
from pretrain.config import CONFIG_DIR
from pretrain.task import BiLSTMTask

SMALL = ["model.embed_dim=16", "model.input_proj=32", "model.hidden=64", "model.proj=32",
         "data.residues_per_batch=2048", "data.max_length=256", "data.window_chunks=2", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("stream_shards"), n_pssm=60, n_plain=140)


def cfg_for(shards, storage, *extra):
    return pretrain_config.load(CONFIG_DIR / "demo.yaml", SMALL + [f"data.train={shards}", f"ray.storage_path={storage}",
                                                                     *extra])


def test_engine_reads_the_shard_schema_data_prep_writes():
    assert SHARD_SCHEMA_VERSION == SCHEMA_VERSION


def test_old_or_missing_shards_fail_in_one_line_naming_the_directory(shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(dict(manifest, schema_version=1)))
    with pytest.raises(DataError, match=f"^{old}: shards are schema_version 1; .*re-run") as err:
        open_source(Source(str(old), ["tokens"]))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="missing column\\(s\\) nope"):
        open_source(Source(str(shards), ["tokens", "nope"]))
    with pytest.raises(DataError, match=f"^{tmp_path / 'none'}: no manifest.json"):
        open_source(Source(str(tmp_path / "none"), ["tokens"]))


def test_uri_source_reads_the_same_row_groups(shards):
    local, uri = open_source(Source(str(shards), ["tokens"])), open_source(Source(f"file://{shards}", ["tokens"]))
    assert local.rows.tolist() == uri.rows.tolist() and local.total_rows == 200
    assert uri.read(3, ["tokens"]).equals(local.read(3, ["tokens"]))


def test_ray_data_stream_equals_in_process_batches(shards, tmp_path, ray_session):
    cfg = cfg_for(shards, tmp_path)
    task = BiLSTMTask(cfg)
    plain = Feed(task.train_data(), cfg, task, rank=1, world=2)
    streamed = Feed(task.train_data(), cfg, task, rank=1, world=2, use_ray=True)
    plan = plain.plan(epoch=3)
    assert len(plan.windows) > 2
    start = len(plan.windows[0]) + 1  # resume inside the second window
    a = list(plain.batches(plan, 3, start=start))
    b = list(streamed.batches(streamed.plan(epoch=3), 3, start=start))
    assert [x.index for x in a] == [x.index for x in b] == list(range(start, plan.own_batches))
    for x, y in zip(a, b):
        assert x.tensors.keys() == y.tensors.keys()
        assert all(torch.equal(x.tensors[k], y.tensors[k]) for k in x.tensors)


@pytest.mark.slow
def test_three_ray_workers_take_equal_steps_when_batches_do_not_divide(shards, tmp_path, ray_session):
    from engine.launch import launch

    cfg = cfg_for(shards, tmp_path, "ray.name=w3", "ray.num_workers=3", "deepspeed.zero_stage=1")
    task = BiLSTMTask(cfg)
    own = [Feed(task.train_data(), cfg, task, rank=r, world=3).plan(0).own_batches for r in range(3)]
    assert sum(own) % 3 != 0 and len(set(own)) > 1  # unequal shares of an epoch that does not divide by 3
    steps = max(own) + 3  # into the second epoch: every rank crosses the same epoch boundary
    cfg = cfg_for(shards, tmp_path, "ray.name=w3", "ray.num_workers=3", "deepspeed.zero_stage=1",
                  f"train.max_steps={steps}", f"train.log_every={steps}", "train.checkpoint_every=1000")
    out = launch(BiLSTMTask, cfg)  # unequal step counts would hang a collective, not finish
    assert out["step"] == steps and out["epoch"] == 1 and np.isfinite(out["ce"])
