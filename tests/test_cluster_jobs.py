"""A real two-node Ray cluster on this machine: `ray job submit` of the demo pretraining job, and
a worker killed mid-run that the run survives by restoring its last checkpoint.

Each node gets one CPU and each training worker asks for one, so a 2-worker run can only be
placed with one worker on each node.
"""
from __future__ import annotations

import json
import re
import signal
import os
import time
from pathlib import Path

import pytest

from conftest import REPO
from ops.local_cluster import VENV_BIN, LocalCluster, netns_available
from ops.runs import load_runs

from _pretrain_shards import build_shards

RAY = str(VENV_BIN / "ray")


@pytest.fixture(scope="module")
def cluster():
    if not netns_available():
        pytest.fail("the cluster tests run the cluster in a private network namespace: run as root with iproute2")
    with LocalCluster(num_nodes=2, cpus_per_node=1) as c:
        yield c


@pytest.fixture(scope="module")
def shards(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("cluster_shards"), n_pssm=40, n_plain=120)


def submit(cluster: LocalCluster, sid: str, args: list[str]) -> None:
    cluster.run([RAY, "job", "submit", f"--address={cluster.dashboard_url}", "--no-wait",
                 f"--submission-id={sid}", f"--working-dir={REPO}", "--", *args], timeout=180)


def status(cluster: LocalCluster, sid: str) -> str:
    """SUCCEEDED, FAILED or STOPPED once the job ended, else PENDING/RUNNING/UNKNOWN."""
    proc = cluster.run([RAY, "job", "status", f"--address={cluster.dashboard_url}", sid], check=False)
    text = (proc.stdout + proc.stderr).lower()  # e.g. "Job 'x' succeeded", "... is currently running"
    for word in ("succeeded", "failed", "stopped", "running", "pending"):
        if re.search(rf"job '{re.escape(sid.lower())}'.*\b{word}\b", text):
            return word.upper()
    return "UNKNOWN"


def wait(cluster: LocalCluster, sid: str, timeout: float = 420) -> tuple[str, str]:
    deadline = time.time() + timeout
    state = "UNKNOWN"
    while time.time() < deadline:
        state = status(cluster, sid)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = cluster.run([RAY, "job", "logs", f"--address={cluster.dashboard_url}", sid], check=False).stdout
    return state, logs


def pretrain_args(shards: Path, storage: Path, name: str, steps: int, every: int) -> list[str]:
    return ["python", "-m", "pretrain", "train", "--config", "pretrain/configs/demo.yaml",
            "--data", str(shards), "--set", f"ray.storage_path={storage}", f"ray.name={name}",
            "ray.num_workers=2", "ray.cpus_per_worker=1", "ray.max_failures=2",
            f"train.max_steps={steps}", f"train.checkpoint_every={every}", "train.log_every=2",
            "data.residues_per_batch=2048", f"wandb.dir={storage}", "wandb.mode=offline"]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("checkpoint_*")) if run_dir.exists() else []


def test_cluster_listens_on_loopback_only(cluster):
    addrs = cluster.listening_addresses()
    assert addrs, "nothing listening: the cluster did not start"
    hosts = {a.rsplit(":", 1)[0].strip("[]") for a in addrs}
    assert hosts <= {"127.0.0.1", "::ffff:127.0.0.1", "::1", "*", "0.0.0.0", "::"}
    # wildcards are fine here: the namespace has no interface but loopback
    ifaces = cluster.run(["ip", "-o", "link"], check=False).stdout
    assert [l.split(":")[1].strip() for l in ifaces.splitlines()] == ["lo"]


def test_submitted_pretraining_job_succeeds_with_checkpoint_and_metrics(cluster, shards, tmp_path):
    storage = tmp_path / "storage"
    submit(cluster, "pretrain-demo", pretrain_args(shards, storage, "cluster-demo", steps=12, every=6))
    state, logs = wait(cluster, "pretrain-demo")
    assert state == "SUCCEEDED", logs[-4000:]
    assert "2 worker(s)" in logs
    run_dir = storage / "cluster-demo"
    assert checkpoints(run_dir), f"no checkpoint under {run_dir}"
    runs = load_runs([str(storage)])
    assert len(runs) == 1
    steps, losses = runs[0].series("joint")
    assert steps and max(steps) == 12
    assert losses[-1] < losses[0]


def test_killed_worker_restores_from_checkpoint_and_finishes(cluster, shards, tmp_path):
    storage = tmp_path / "storage"
    run_dir = storage / "cluster-ft"
    submit(cluster, "pretrain-ft", pretrain_args(shards, storage, "cluster-ft", steps=16, every=4))
    # Kill only once Ray Train's controller has registered a checkpoint (its snapshot file in the
    # run dir lists it): a checkpoint reported but not yet collected dies with the worker.
    deadline = time.time() + 300
    while not _registered_steps(run_dir):
        assert time.time() < deadline, "no registered checkpoint in time"
        assert status(cluster, "pretrain-ft") in ("PENDING", "RUNNING", "UNKNOWN")
        time.sleep(1)
    registered = max(_registered_steps(run_dir))
    victims = [p for p in cluster.pids() if "RayTrainWorker" in _cmdline(p)]
    assert victims, "no training worker process found"
    os.kill(victims[-1], signal.SIGKILL)
    state, logs = wait(cluster, "pretrain-ft")
    (storage / "job.log").write_text(logs)
    assert state == "SUCCEEDED", logs[-4000:]
    assert "Error count: 1" in logs  # Ray Train saw the dead worker and restarted the group
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", logs)]
    assert resumed and resumed[-1] >= registered >= 4, logs[-4000:]
    assert _last_logged_step(run_dir) == 16


def _registered_steps(run_dir: Path) -> list[int]:
    path = run_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(path.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [int(r["metrics"]["step"]) for r in results]


def _last_logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
