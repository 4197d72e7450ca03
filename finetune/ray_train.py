"""Ray Train launcher around `train.fit`: TorchTrainer, data parallel over `num_workers`.

The embeddings travel through the object store (one `ray.put`), so workers need no shared
file system. Rank 0 reports the best weights as the run's checkpoint.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from engine.ray_env import ensure_ray

from .config import ModelConfig, TrainConfig
from .errors import FinetuneError
from .train import FitResult, build_head, fit


def _worker(config: dict) -> None:
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train, valid = ray.get(config["train"]), ray.get(config["valid"])
    model_cfg, train_cfg = ModelConfig(**config["model"]), TrainConfig(**config["train_cfg"])
    torch.manual_seed(config["seed"])  # identical initial weights on every rank
    model = build_head(model_cfg, train.dim, tuple(config["tasks"]))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    result = fit(model, train, valid, train_cfg, config["seed"], rank=rank, world=world)
    metrics = {"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
               "epochs_run": result.epochs_run, "seconds": result.seconds, "world": world}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save({"state": result.best_state, "history": result.history, **metrics}, Path(tmp) / "best.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def fit_with_ray(model_cfg: ModelConfig, train_cfg: TrainConfig, train, valid, seed: int,
                 storage: str | Path, name: str, tasks: tuple[str, ...] = ("ss3", "ss8", "disorder")):
    """Train one seed on `train_cfg.num_workers` Ray Train workers; returns (model, FitResult)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(log_to_driver=False)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"train": ray.put(train), "valid": ray.put(valid), "model": asdict(model_cfg),
                           "train_cfg": asdict(train_cfg), "seed": seed, "tasks": list(tasks)},
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=False),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve())))
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker errors; keep the first line for the user
        raise FinetuneError(f"Ray Train run {name} failed: {str(err).strip().splitlines()[0]}") from err
    if result.checkpoint is None:
        raise FinetuneError(f"Ray Train run {name} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / "best.pt", weights_only=True)
    model = build_head(model_cfg, train.dim, tasks)
    model.load_state_dict(saved["state"])
    fit_result = FitResult(saved["state"], saved["best_epoch"], saved["best_val_loss"], saved["epochs_run"],
                           saved["seconds"], saved["history"])
    return model, fit_result
