"""Ray Train launcher around `engine.loop.train_worker`.

Joins a running cluster when RAY_ADDRESS is set (e.g. under `ray job submit`), else starts a local
Ray on 127.0.0.1 without dashboard. One TorchTrainer run per call:
ScalingConfig(num_workers, use_gpu), RunConfig(storage_path, name, FailureConfig(max_failures)).
Starting the same (storage_path, name) again resumes from its latest checkpoint: Ray Train keeps
a snapshot of reported checkpoints in the run folder and hands the newest to `get_checkpoint()`;
a worker failure during the run restarts all workers from it (up to `max_failures` times).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from .checkpoint import is_uri, join_path
from .config import ExperimentConfig
from .errors import UserError
from .ray_env import ensure_ray


class LaunchError(UserError, RuntimeError):
    """Training failed under Ray; the message carries the worker's error in one line."""


def _worker_entry(config: dict) -> None:
    from .loop import train_worker

    train_worker(config["task_cls"], config["cfg"], under_ray=True, faults=config["faults"])


def launch(task_cls, cfg: ExperimentConfig, *, faults=None) -> dict:
    """Train under Ray Train; returns rank 0's last reported metrics plus the checkpoint path.
    `faults` (engine.loop.Faults) are test hooks: an injected failure, an early stop."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.base_trainer import TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = with_absolute_paths(cfg)
    r = cfg.ray
    # a local Ray also needs CPUs for the Ray Data tasks that read each worker's batches
    read = math.ceil(cfg.data.read_tasks * cfg.data.read_cpus)
    ensure_ray(r.local_num_cpus or r.num_workers * (r.cpus_per_worker + read))
    storage = r.storage_path
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"task_cls": task_cls, "cfg": cfg, "faults": faults},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=RunConfig(name=r.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=r.num_to_keep)),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        _raise_root(err, f"run {storage}/{r.name} failed")
    if result.error is not None:
        _raise_root(result.error, f"run {storage}/{r.name} failed")
    out = dict(result.metrics or {})
    run_dir = join_path(storage, r.name)  # a URI keeps its query (endpoint_override=...) at the end
    ckpt = result.checkpoint
    out["checkpoint"] = (join_path(run_dir, Path(ckpt.path).name) if is_uri(storage) else ckpt.path) if ckpt else None
    out["run_dir"] = run_dir
    return out


def with_absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative paths mean "from where the user ran the command"; Ray Train workers run elsewhere
    (their own working directory, possibly another node), so resolve them before shipping."""
    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path and "://" not in path else path

    return replace(cfg,
                   data=replace(cfg.data, train=absolute(cfg.data.train), valid=absolute(cfg.data.valid)),
                   ray=replace(cfg.ray, storage_path=absolute(cfg.ray.storage_path)),
                   deepspeed=replace(cfg.deepspeed, config=absolute(cfg.deepspeed.config)),
                   wandb=replace(cfg.wandb, dir=absolute(cfg.wandb.dir)))


def _raise_root(err: BaseException, what: str):
    """Ray wraps a worker's exception (and its restarts) in its own; a user-caused one (UserError:
    bad data, bad key) becomes one LaunchError line, anything else is a bug and keeps its traceback."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, UserError):
        text = str(root).strip().splitlines()
        raise LaunchError(f"{what}: {text[-1] if text else type(root).__name__}") from err
    raise err
