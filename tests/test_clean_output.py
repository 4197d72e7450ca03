"""What a person sees: stdout is the command's result, stderr is this project's lines in one
format (with progress), and Ray's own messages go to the log file (engine.logs).

The training test starts a second local Ray first: Ray Train's helper actors then print
tracebacks ("Found multiple active Ray instances"), which must stay out of the terminal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import REPO, SAMPLE
from engine.launch import _kill, process_tree
from engine.logs import OUR_LINE

RAY_NOISE = ("Traceback", "RayTrainWorker", "TrainController", "PlacementGroupCleaner", "core_worker",
             "Token authentication", "pid=", "WARNING", "Warning")
SMALL = ["model.embed_dim=16", "model.input_proj=32", "model.hidden=64", "model.proj=32",
         "data.residues_per_batch=2048", "data.max_length=256", "optim.warmup_steps=1", "wandb.mode=disabled"]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY", "PROTLM_PRIVATE_NETWORK")}
    return {**env, "PROTLM_LOG_DIR": str(tmp_path / "logs")}


def _stderr_is_ours(err: str) -> list[str]:
    """Lines of stderr not in the project's format (empty when clean)."""
    return [line for line in err.splitlines() if line.strip() and not OUR_LINE.match(line)
            and "[ray.data] Total Progress" not in line]


def test_a_cli_command_prints_its_json_result_on_stdout_and_nothing_else(tmp_path):
    fasta = tmp_path / "small.fasta"
    fasta.write_text("".join(f">p{i}\nMKTAYIAKQRQISFVKSHFSRQ{'A' * i}\n" for i in range(50)))
    proc = subprocess.run([sys.executable, "-m", "data_prep", "--num-cpus", "2", "fasta", str(fasta),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["rows"] == 50, proc.stdout
    assert not any(word in proc.stderr for word in RAY_NOISE), proc.stderr
    assert "[data_prep] fasta: 50 rows (none rejected)" in proc.stderr
    log = (tmp_path / "logs" / "data_prep.log").read_text()
    assert "Ray session logs: /" in log and " fasta " in log  # the command line, and where Ray's own logs are
    assert "Total Progress" in log  # Ray Data's own progress (logged, as stdout is no terminal here)


def test_training_output_is_clean_with_a_second_ray_running(shared_data, tmp_path):
    from _pretrain_shards import build_shards

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=20, n_plain=40)
    env = _env(tmp_path)
    other = subprocess.Popen(  # another local Ray on this machine, as a second user's would be
        [sys.executable, "-c", "import ray, sys, time; ray.init(address='local', num_cpus=1, include_dashboard=False,"
         " _node_ip_address='127.0.0.1', log_to_driver=False); print('up', flush=True); time.sleep(900)"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        cmd = [sys.executable, "-m", "pretrain", "train", "--config", str(REPO / "pretrain/configs/demo.yaml"),
               "--data", str(shards), "--set", *SMALL, f"ray.storage_path={tmp_path / 'runs'}", "ray.name=clean",
               "ray.num_workers=2", "train.max_steps=6", "train.log_every=1", "train.checkpoint_every=100"]
        start = time.time()
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
        seconds = time.time() - start
    finally:  # end exactly what this test started: the process and its Ray
        tree = process_tree(other.pid)
        other.kill()
        other.wait()
        _kill(tree)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # stdout: the JSON result alone
    assert result["step"] == 6 and result["run_dir"].endswith("clean")
    err = proc.stderr
    assert not any(word in err for word in RAY_NOISE), err
    assert not _stderr_is_ours(err), err
    # progress: every step once (Ray Train echoes a worker's line twice), an ETA while it runs
    steps = [line for line in err.splitlines() if "[engine] step " in line]
    assert [line.split("[engine] step ")[1].split(" ")[0] for line in steps] == [f"{i}/6" for i in range(1, 7)], err
    assert any("ETA " in line for line in steps[:-1]) and "ETA" not in steps[-1], err
    assert "2 worker(s)" in err and "fresh start" in err
    log = (tmp_path / "logs" / "pretrain.log").read_text()
    assert "Ray session logs: /" in log and "[engine] step 6/6" in log
    print(f"clean training run: {seconds:.0f} s")


def test_progress_lines_count_and_estimate(monkeypatch, caplog):
    import logging

    import engine.logs as logs

    clock = iter([0.0, 10.0, 30.0])
    monkeypatch.setattr(logs.time, "monotonic", lambda: next(clock))
    progress = logs.StepProgress(total=40)
    first = progress.line(10, {"loss": 2.5, "residues_per_s": 5000.0})
    assert first == "step 10/40 (25%), loss 2.5, 5e+03 res/s"  # no rate yet: no ETA
    assert progress.line(20, {"loss": 2.0}) == "step 20/40 (50%), loss 2, ETA 20s"  # 10 steps per 10 s
    assert progress.line(40, {"loss": 1.5}).endswith("loss 1.5")  # done: no ETA
    assert [logs.format_seconds(s) for s in (42, 185, 3720)] == ["42s", "3m05s", "1h02m"]

    clock = iter([0.0, 5.0, 11.0, 12.0])
    monkeypatch.setattr(logs.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="finetune"):
        counter = logs.CountProgress(1000, "embedding x", logging.getLogger("finetune"), every=10)
        counter.add(100)  # 5 s: not yet
        counter.add(450)  # 11 s: 550 done at 50/s
        counter.add(450)  # 12 s: done, the caller says so
    assert [r.getMessage() for r in caplog.records] == ["embedding x: 550/1000 (55%), 50/s, ETA 9s"]
