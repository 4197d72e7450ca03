"""Checkpoints, resume after a killed worker, and export with `ray.storage_path` on a real S3
protocol server: moto's server mode on 127.0.0.1, reached by pyarrow's S3 filesystem through
`s3://bucket/path?endpoint_override=http://127.0.0.1:PORT&scheme=http`.

The training run is the CLI (`python -m pretrain train`) in a subprocess with its own local Ray:
once Ray Train has registered a checkpoint in the bucket, the test SIGKILLs one of the run's
Ray Train worker processes; the run must restart its workers from that checkpoint (downloaded
from S3), finish, and `python -m pretrain export` must load the result from S3."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from engine.launch import process_tree

BUCKET = "protlm"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service for anything
SMALL = ["model.embed_dim=16", "model.input_proj=32", "model.hidden=64", "model.proj=32",
         "data.residues_per_batch=2048", "data.max_length=256", "optim.warmup_steps=2", "wandb.mode=disabled"]
MAX_STEPS, EVERY = 12, 4


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on loopback with one empty bucket; yields `uri(path)`."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)  # one line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True,
                               access_key="testing", secret_key="testing", region="us-east-1")
        fs.create_dir(BUCKET)
        yield lambda path: f"s3://{BUCKET}/{path}?endpoint_override={endpoint}&scheme=http"
    finally:
        server.stop()


def s3_json(uri: str):
    """A JSON file in the bucket, or None while it does not exist."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


def descendants(root: int) -> list[int]:
    """Every process below `root` (only what this test started)."""
    return list(process_tree(root))


def train_workers(root: int) -> list[int]:
    out = []
    for pid in descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::RayTrainWorker"):
            out.append(pid)
    return out


def test_checkpoints_resume_and_export_on_s3(shared_data, s3, tmp_path):
    from _pretrain_shards import build_shards
    from engine.checkpoint import load_export
    from pretrain.__main__ import main
    from pretrain.embed import load_embedder

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=40, n_plain=80)
    storage, name = s3("runs"), "s3run"
    run_uri = s3(f"runs/{name}")
    cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/demo.yaml"),
           "--data", str(shards), "--set", *SMALL, f"ray.storage_path={storage}", f"ray.name={name}",
           "ray.num_workers=2", f"train.max_steps={MAX_STEPS}", f"train.checkpoint_every={EVERY}",
           "train.log_every=1", "ray.max_failures=1"]
    env = {**os.environ, **CREDENTIALS, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "train.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        # wait for Ray Train to register a checkpoint in the bucket, then kill a worker
        deadline = time.time() + 240
        registered = None
        while registered is None and proc.poll() is None and time.time() < deadline:
            snapshot = s3_json(s3(f"runs/{name}/checkpoint_manager_snapshot.json"))
            if snapshot and snapshot.get("latest_checkpoint_result"):
                registered = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
            else:
                time.sleep(0.2)
        assert registered, f"no checkpoint registered in S3 (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        workers = train_workers(proc.pid)
        assert len(workers) == 2, f"expected 2 Ray Train workers below the run, found {workers}"
        os.kill(max(workers), signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # the test failed: stop exactly what it started
            for pid in [*descendants(proc.pid), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]

    seen = int(registered.rsplit("_", 1)[1])
    before, _, after = out.partition("resumed from")
    assert "fresh start" in before and "fresh start" not in after, out[-4000:]
    resumed = set(re.findall(r"resumed from \S+ at step (\d+)", out))
    assert len(resumed) == 1, out[-4000:]
    step = int(resumed.pop())
    assert step >= seen > 0 and step % EVERY == 0 and step < MAX_STEPS  # the restart began at a registered checkpoint
    first = int(re.search(r"\[engine\] step (\d+)/", after).group(1))
    assert first == step + 1  # training continued from the checkpoint, not from step 0

    final = s3_json(s3(f"runs/{name}/checkpoint_{MAX_STEPS:08d}/train_state.json"))
    assert final and final["step"] == MAX_STEPS and final["world_size"] == 2

    # export straight from the bucket (the run's latest checkpoint), then load it like a downstream stage
    export_dir = tmp_path / "export"
    assert main(["export", "--run", run_uri, "--out", str(export_dir)]) == 0
    assert sorted(p.name for p in export_dir.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]  # tokenizer_*: transformers.AutoTokenizer
    config, weights = load_export(export_dir, kind="bilstm")
    assert config["train"]["step"] == MAX_STEPS and weights
    assert load_embedder(export_dir).dim > 0


def test_uri_paths_keep_their_query_and_missing_runs_fail_in_one_line(s3, tmp_path):
    from engine.checkpoint import CheckpointError, export, join_path, resolve_checkpoint

    assert join_path(s3("runs"), "a", "checkpoint_1") == s3("runs/a/checkpoint_1")
    assert join_path("s3://b/runs/", "a") == "s3://b/runs/a"
    assert join_path("/data/runs", "a") == "/data/runs/a"
    with pytest.raises(CheckpointError, match="no checkpoint found") as err:
        export(s3("runs/missing"), tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="export the run first"):
        resolve_checkpoint(s3("runs/missing"))
