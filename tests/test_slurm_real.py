"""The SLURM batch script on a real SLURM: munged, slurmctld and slurmd (Debian's slurm-wlm) in a
loopback-only network namespace (ops/slurm_cluster.py). `sbatch --wait` submits
ops/slurm/protlm.sbatch with a demo-sized pretraining command: the script starts the Ray head
with a real `srun` step, the stage joins it and trains, and the job leaves no Ray process behind."""
from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import pytest

from conftest import REPO


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_sbatch_template_trains_on_a_real_slurm_cluster(shared_data, tmp_path):
    from _pretrain_shards import build_shards
    from ops.slurm_cluster import LocalSlurm

    if os.geteuid() != 0:
        pytest.skip("slurmd and the private network namespace need root")
    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=10, n_plain=30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_bin = os.path.dirname(sys.executable)
    out = tmp_path / "job.out"
    with LocalSlurm(tmp_path / "slurm") as slurm:
        env = {**slurm.env(), "PATH": f"{venv_bin}:{os.environ['PATH']}", "PROTLM_PYTHON_BIN": venv_bin,
               "PROTLM_RAY_PORT": str(port), "WANDB_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        job = slurm.run(["sbatch", "--wait", "--nodes=1", "--cpus-per-task=2", f"--output={out}", f"--chdir={REPO}",
                         "ops/slurm/protlm.sbatch", "python", "-m", "pretrain", "train", "--config",
                         "pretrain/configs/demo.yaml", "--data", str(shards), "--set",
                         f"ray.storage_path={tmp_path / 'runs'}", "ray.name=slurm", "ray.num_workers=1",
                         "model.hidden=64", "model.proj=32", "model.input_proj=32", "train.max_steps=2",
                         "train.log_every=1", "wandb.mode=disabled"], env=env, timeout=480, check=False)
        log = out.read_text() if out.exists() else ""
        assert job.returncode == 0, f"{job.stdout}{job.stderr}\n{log[-4000:]}\n{slurm.logs()}"
        job_id = re.search(r"Submitted batch job (\d+)", job.stdout).group(1)
        state = slurm.run(["scontrol", "show", "job", job_id]).stdout
        assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
        # the job's Ray nodes were stopped with it: no Ray process is left in the namespace
        left = [cmdline(pid) for pid in slurm.pids()]
        assert not [c for c in left if re.search(r"\bray\b|raylet|gcs_server|ray::", c)], left
        assert any("slurmd" in c for c in left)  # (the listing works: the daemons are still there)
    assert "[slurm] Ray head on" in log and "(127.0.0.1:" in log
    assert '"step": 2' in log and '"run_dir": ' in log  # the command's JSON result
    assert (tmp_path / "runs" / "slurm" / "checkpoint_00000002" / "model.safetensors").is_file()
