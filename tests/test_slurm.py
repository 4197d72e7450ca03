"""The SLURM batch script, run for real on this machine: `scontrol` and `srun` are replaced by
shims that run each step here, so the script starts a real one-node Ray cluster (token auth) and
the training command joins it through RAY_ADDRESS."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from conftest import REPO

SHIMS = {
    "scontrol": 'echo localhost\n',
    # srun [options] command...: drop the options, answer `hostname --ip-address` with loopback
    "srun": 'while [[ "$1" == -* ]]; do case "$1" in -w|--nodelist) shift 2;; *) shift;; esac; done\n'
            'if [ "$1" = hostname ]; then echo 127.0.0.1; else exec "$@"; fi\n',
}


def test_sbatch_script_starts_ray_and_the_stage_joins_it(shared_data, tmp_path):
    from _pretrain_shards import build_shards

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=10, n_plain=30)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_bin = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{venv_bin}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_CPUS_PER_TASK": "2", "PROTLM_RAY_PORT": str(port), "PROTLM_PYTHON_BIN": venv_bin}
    env.pop("RAY_ADDRESS", None)
    cmd = ["bash", "ops/slurm/protlm.sbatch", "python", "-m", "pretrain", "train", "--config",
           "pretrain/configs/demo.yaml", "--data", str(shards), "--set", f"ray.storage_path={tmp_path / 'runs'}",
           "ray.name=slurm", "ray.num_workers=1", "model.hidden=64", "model.proj=32", "model.input_proj=32", "train.max_steps=2",
           "train.log_every=1", "wandb.mode=disabled"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[slurm] Ray head on localhost (127.0.0.1" in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2  # stdout: the JSON result
    assert (tmp_path / "runs" / "slurm").is_dir()
