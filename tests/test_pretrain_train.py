"""Training runs on real shards: Ray Train + DeepSpeed with 2 CPU workers, resume, export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _pretrain_shards import build_shards
from engine.checkpoint import latest_checkpoint, load_export
from pretrain import config as pretrain_config
from pretrain.config import CONFIG_DIR
from pretrain.task import BiLSTMTask

SMALL = ["model.embed_dim=16", "model.input_proj=32", "model.hidden=128", "model.proj=32", "model.dropout=0.1",
         "data.residues_per_batch=3072", "data.max_length=256", "optim.lr=0.003", "optim.warmup_steps=2",
         "wandb.mode=offline"]


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("pretrain_shards"), n_pssm=80, n_plain=160)


def small_cfg(shards, storage, name, *extra):
    return pretrain_config.load(CONFIG_DIR / "demo.yaml", SMALL + [f"data.train={shards}", f"ray.storage_path={storage}",
                                                                     f"ray.name={name}", *extra])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ray_workers_with_deepspeed_lower_the_loss_and_survive_a_failure(shards, tmp_path, ray_session):
    from engine.launch import launch
    from engine.loop import Faults
    from pretrain.__main__ import main
    from pretrain.embed import load_embedder

    cfg = small_cfg(shards, tmp_path, "ray2", "ray.num_workers=2", "deepspeed.zero_stage=2", "train.max_steps=16",
                    "train.log_every=2", "train.checkpoint_every=6", "ray.max_failures=1")
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    out = launch(BiLSTMTask, cfg, faults=Faults(fail_once_at_step=8))
    # DeepSpeed's per-rank shared-memory buffers (66 MB each) are released, the crashed attempt's too
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm_before
    run_dir = tmp_path / "ray2"
    assert out["step"] == 16 and out["checkpoint"].endswith("checkpoint_00000016")
    assert (run_dir / ".injected_failure_8").exists()  # rank 1 crashed once; Ray restarted from step 6
    log = read_metrics(run_dir)
    steps = [m["step"] for m in log]
    assert steps == [2, 4, 6, 8, 8, 10, 12, 14, 16] or steps == [2, 4, 6, 8, 10, 12, 14, 16]
    # CE falls steadily; the joint loss too, though KL is noisy (batches differ in PSSM content)
    assert log[-1]["ce"] < log[0]["ce"] - 0.15 and log[-1]["joint"] < log[0]["joint"]
    assert all(m["residues_per_s"] > 0 and m["lr"] > 0 for m in log)
    # windows of a 240-protein test set are tiny; on a real corpus the batching tests ask >= 0.9
    assert np.mean([m["padding_efficiency"] for m in log]) >= 0.9
    assert all(m["kl"] > 0 for m in log)  # batches carry real PSSMs
    state = json.loads((latest_checkpoint(run_dir) / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 16
    ds_files = {p.name for p in (latest_checkpoint(run_dir) / "ds" / "state").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= ds_files

    # export through the CLI; the consolidated weights equal DeepSpeed's own module state
    export_dir = tmp_path / "export"
    assert main(["export", "--run", str(run_dir), "--out", str(export_dir)]) == 0
    config, weights = load_export(export_dir)
    assert config["kind"] == "bilstm" and config["train"]["step"] == 16 and config["git_commit"]
    module = torch.load(latest_checkpoint(run_dir) / "ds" / "state" / "mp_rank_00_model_states.pt",
                        weights_only=False)["module"]
    assert set(module) == set(weights)
    assert all(torch.equal(module[k].float(), weights[k]) for k in weights)
    embedder = load_embedder(export_dir)
    tokens = torch.tensor([[15, 12, 21, 5, 24, 11, 5, 12]])
    assert embedder.embed(tokens, torch.tensor([8])).shape == (1, 8, embedder.dim)


def test_stopped_and_resumed_run_matches_uninterrupted(shards, tmp_path):
    from engine.loop import Faults, run_plain

    common = ["train.max_steps=6", "train.log_every=1", "train.checkpoint_every=100", "deepspeed.zero_stage=1",
              "deepspeed.grad_accum_steps=2", "wandb.mode=disabled", "data.limit=120"]
    run_plain(BiLSTMTask, small_cfg(shards, tmp_path, "full", *common))
    stopped = run_plain(BiLSTMTask, small_cfg(shards, tmp_path, "resumed", *common), faults=Faults(stop_after=3))
    assert stopped["step"] == 3 and latest_checkpoint(tmp_path / "resumed").name == "checkpoint_00000003"
    run_plain(BiLSTMTask, small_cfg(shards, tmp_path, "resumed", *common))
    again = run_plain(BiLSTMTask, small_cfg(shards, tmp_path, "resumed", *common))  # finished: trains nothing
    assert again["step"] == 6 and latest_checkpoint(tmp_path / "resumed").name == "checkpoint_00000006"
    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in full] == [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full, resumed):
        assert a["residues"] == b["residues"]  # the same batches, in the same order
        assert a["joint"] == pytest.approx(b["joint"], rel=1e-4)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    a = load_export(latest_checkpoint(tmp_path / "full"))[1]
    b = load_export(latest_checkpoint(tmp_path / "resumed"))[1]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: the same batches, in the same order


def test_cli_reports_bad_data_dir_in_one_line(tmp_path, capsys):
    from pretrain.__main__ import main

    assert main(["train", "--config", str(CONFIG_DIR / "demo.yaml"), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
