"""The per-worker training function: DeepSpeed around a task's model, fed by residue-budget batches.

`train_worker(task_cls, cfg)` is what every Ray Train worker runs (engine.launch). Called in a
plain process without Ray (`run_plain`), it makes a one-process gloo group itself, reads its
batches in-process instead of through Ray Data, and writes checkpoints to
`<storage_path>/<name>/` directly: the same code path, for debugging.

Data: each epoch the rank plans its windows of row groups (engine.epoch) and streams their
batches (engine.stream); every rank runs the same number of batches.

Step accounting: `train.max_steps` counts optimizer steps; each is `deepspeed.grad_accum_steps`
micro-batches. Checkpoints sit on optimizer-step boundaries and record the data position (epoch,
next batch in the epoch), so a resumed run sees exactly the batches an uninterrupted one would.
Dropout is re-seeded from (seed, step, rank) every step, so resumed runs match without RNG state.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import ExperimentConfig, deepspeed_settings, to_dict
from .logs import StepProgress, format_seconds, setup_worker
from .ray_env import set_process_env
from .sources import DataError, Mixture
from .stream import Feed
from .tracking import Tracker, git_commit

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    under_ray: bool


def lr_lambda(optim_cfg, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine / linear decay to min_lr_ratio at max_steps (or constant)."""
    warm, floor = optim_cfg.warmup_steps, optim_cfg.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if optim_cfg.decay == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, max_steps - warm))
        shape = 0.5 * (1 + math.cos(math.pi * t)) if optim_cfg.decay == "cosine" else 1 - t
        return floor + (1 - floor) * shape

    return factor


def use_bf16(setting) -> bool:
    if isinstance(setting, bool):
        return setting
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def deepspeed_config(cfg: ExperimentConfig, bf16: bool) -> dict:
    return deepspeed_settings(cfg.deepspeed, bf16)


def shm_buffer_path(rank: int) -> Path:
    """The /dev/shm file DeepSpeed's CPU all-reduce creates for `rank` (its shm.cpp naming)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}")


def release_shm_buffer(rank: int) -> None:
    """Unlink this rank's DeepSpeed shared-memory buffer once every rank has mapped it.

    DeepSpeed's CPU all-reduce gives each rank a 66 MB /dev/shm file that its peers open by name
    during `deepspeed.initialize` and that nothing ever deletes: every run, finished or killed, left
    them in RAM (208 files, 14 GB, on the development VM until Ray's OOM killer stopped training).
    After the barrier every peer holds its mapping, so the name is no longer needed."""
    torch.distributed.barrier()
    shm_buffer_path(rank).unlink(missing_ok=True)  # absent on GPUs or across machines: no file made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_context() -> WorkerContext:
    """One-process group for DeepSpeed when running without Ray."""
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, rank=0, world_size=1)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return WorkerContext(0, 1, 0, device, under_ray=False)


def _ray_context() -> WorkerContext:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world, local = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    # DeepSpeed reads these to place the model and to reuse Ray's process group.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local),
                      LOCAL_SIZE=str(ctx.get_local_world_size()))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return WorkerContext(rank, world, local, device, under_ray=True)


@dataclass
class Faults:
    """Test hooks, passed by tests to `run_plain` / `launch` (never part of a user's config)."""
    stop_after: int = 0  # end the process after this many optimizer steps, with a checkpoint, unfinished (resume tests)
    fail_once_at_step: int = 0  # the last rank raises once at this step (a marker file in the run dir remembers it)


def run_plain(task_cls, cfg: ExperimentConfig, *, faults: Faults | None = None) -> dict:
    """Train in this process without Ray (debugging; benchmarks' single-process reference)."""
    return train_worker(task_cls, cfg, under_ray=False, faults=faults)


def train_worker(task_cls, cfg: ExperimentConfig, under_ray: bool = True, faults: Faults | None = None) -> dict:
    """Train `task_cls(cfg)` on this worker until `train.max_steps` (or `train.max_epochs`, or early
    stopping); returns the last metrics.

    Selection (`train.select_metric`): every evaluation compares eval_<metric> with the best so far;
    a better one keeps a copy of the consolidated weights, and every checkpoint's export
    (model.safetensors) is then the best model, not the last one, so `export(run)` hands downstream
    the selected model. `train.patience` evaluations without improvement end the run. The best value,
    its step and epoch and the evaluations since are part of the train state, so a resumed run
    selects and stops exactly as an uninterrupted one."""
    set_process_env()  # before DeepSpeed builds or loads its CPU ops
    import deepspeed

    if under_ray:
        setup_worker()
    faults = faults or Faults()

    ctx = _ray_context() if under_ray else _plain_context()
    seed = cfg.train.seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    task = task_cls(cfg)
    model = task.build_model()
    accum = cfg.deepspeed.grad_accum_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.train.max_steps))
    bf16 = use_bf16(cfg.deepspeed.bf16)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, bf16), dist_init_required=False)
    release_shm_buffer(ctx.rank)
    run_dir = Path(cfg.ray.storage_path).resolve() / cfg.ray.name
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "residues_seen": 0,
             "world_size": ctx.world_size, "zero_stage": cfg.deepspeed.zero_stage}
    resume_dir = _resume_dir(ctx, run_dir)
    selection = _Selection(cfg.train)
    if resume_dir is not None:
        state = ckpt.load_checkpoint(engine, resume_dir, world_size=ctx.world_size,
                                     zero_stage=cfg.deepspeed.zero_stage)
        selection.restore(state, resume_dir)
    commit = git_commit()
    full_config = {**to_dict(cfg), "task": task.kind, "world_size": ctx.world_size, "bf16": bf16,
                   "git_commit": commit}
    tracker = Tracker(cfg.wandb, full_config, run_dir, cfg.ray.name, ctx.rank)
    if ctx.rank == 0:
        where = f"resumed from {resume_dir} at step {state['step']}" if resume_dir else "fresh start"
        log.info(f"{task.kind}: {ctx.world_size} worker(s), ZeRO {cfg.deepspeed.zero_stage}, "
                 f"{'bf16' if bf16 else 'fp32'} on {ctx.device.type} ({torch.get_num_threads()} threads); {where}")

    agree = _agreement(ctx)
    feed = Feed(task.train_data(), cfg, task, rank=ctx.rank, world=ctx.world_size, agree=agree, use_ray=under_ray)
    eval_sources = task.eval_data()
    valid = Feed(Mixture(eval_sources), cfg, task, rank=ctx.rank, world=ctx.world_size, agree=agree,
                 use_ray=under_ray, training=False) if eval_sources else None
    window = _Window()
    last: dict = {}
    micro = 0
    stop_at = faults.stop_after or cfg.train.max_steps
    per_epoch = cfg.train.eval_every_epoch
    # "stopped": patience ran out (part of the state, so a resumed run stays stopped); the step and
    # epoch limits come from the config, so a finished run can be extended by raising them
    epochs_done = lambda: bool(cfg.train.max_epochs) and state["epoch"] >= cfg.train.max_epochs  # noqa: E731
    done = state["step"] >= cfg.train.max_steps or state.get("stopped", False) or epochs_done()
    if done:  # a finished run resumed: nothing to train, but the caller still learns where it ended
        last = {"step": state["step"], "epoch": state["epoch"]}
        if state["epoch"] and "train_seconds" in state:
            last["seconds_per_epoch"] = state["train_seconds"] / state["epoch"]
    epoch_start = time.perf_counter()
    progress: StepProgress | None = None

    def report(metrics: dict, save: bool, step_line: bool = True) -> None:
        """Log on rank 0 (a progress line unless the epoch line says it); checkpoint (every rank)
        or report to Ray Train without one."""
        metrics.update(selection.summary())
        tracker.log(metrics, state["step"])
        if ctx.rank == 0 and step_line:
            log.info(progress.line(state["step"], metrics))
        if save:
            weights = selection.weights if selection.active else None
            _checkpoint(engine, task, cfg, ctx, state, metrics, run_dir, commit, weights)
        elif ctx.under_ray:
            import ray.train
            ray.train.report(metrics)

    engine.train()
    while not done:
        plan = feed.plan(state["epoch"])
        if not plan.batches:
            raise DataError(f"{cfg.data.train}: no trainable proteins (all shorter than data.min_length?)")
        if ctx.rank == 0 and state["batch_in_epoch"] == 0 and (state["epoch"] == 0 or not per_epoch):
            st = plan.stats
            log.info(f"epoch {state['epoch']}: {plan.batches} batches per rank ({plan.own_batches} on rank 0 "
                     f"before fillers), {st.proteins} proteins -> {st.pieces} pieces ({st.long_proteins} longer than "
                     f"{cfg.data.max_length} {'windowed' if cfg.data.long_proteins == 'window' else 'cropped'}, "
                     f"{st.skipped_short} too short), padding efficiency {plan.padding_efficiency:.3f}")
        if progress is None:  # the step total once the first epoch's plan is known
            per_epoch_steps = max(1, plan.batches // accum)
            total = cfg.train.max_steps
            if cfg.train.max_epochs:
                total = min(total, cfg.train.max_epochs * per_epoch_steps)
            progress = StepProgress(total)
        stream = feed.batches(plan, state["epoch"], start=state["batch_in_epoch"])
        for ready in stream:
            index = ready.index
            if micro % accum == 0:  # dropout depends on the step only, so resume matches
                torch.manual_seed(hash((seed, state["step"], ctx.rank)) % 2**31)
            tensors = ready.tensors
            tensors = {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in tensors.items()}
            loss, logs = task.loss(engine, tensors)
            engine.backward(loss)
            engine.step()
            micro += 1
            window.add(logs, ready.residues, ready.padded)
            if micro % accum:
                continue
            state["step"] += 1
            state["batch_in_epoch"] = index + 1
            step = state["step"]
            window.grad_norms.append(_grad_norm(engine))
            _maybe_inject_failure(faults, ctx, step, run_dir)
            final = step >= cfg.train.max_steps
            # with per-epoch reports the epoch's last step is reported and saved after its evaluation
            epoch_end = per_epoch and index + 1 == plan.batches and not final
            save = (step % cfg.train.checkpoint_every == 0 or final or step == stop_at) and not epoch_end
            if (step % cfg.train.log_every == 0 or save) and not epoch_end:
                metrics = window.reduce(ctx, task)
                state["residues_seen"] += int(metrics.get("residues", 0))
                metrics.update(lr=scheduler_lr(engine), step=step, epoch=state["epoch"])
                if valid is not None and (final or (cfg.train.eval_every and step % cfg.train.eval_every == 0)):
                    metrics.update(evaluate(task, engine, valid, cfg, ctx))
                    state["stopped"] = selection.update(metrics, state, engine)
                report(metrics, save or state.get("stopped", False))
                last = metrics
            if final or step == stop_at or state.get("stopped"):
                done = True
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["train_seconds"] = state.get("train_seconds", 0.0) + time.perf_counter() - epoch_start
            if per_epoch:
                metrics = window.reduce(ctx, task)
                state["residues_seen"] += int(metrics.get("residues", 0))
                metrics.update(lr=scheduler_lr(engine), step=state["step"], epoch=state["epoch"],
                               seconds_per_epoch=state["train_seconds"] / state["epoch"])
                if valid is not None:
                    metrics.update(evaluate(task, engine, valid, cfg, ctx))
                    state["stopped"] = selection.update(metrics, state, engine)
                report(metrics, save=True, step_line=False)
                last = metrics
                if ctx.rank == 0:
                    epochs = cfg.train.max_epochs or state["epoch"]
                    left = max(epochs - state["epoch"], 0) * metrics["seconds_per_epoch"]
                    log.info(f"epoch {state['epoch']}/{epochs}: " + ", ".join(
                        f"{k} {v:.4g}" for k, v in metrics.items()
                        if k in ("loss", "eval_loss", "seconds_per_epoch", "best_epoch") or k == f"eval_{selection.metric}")
                        + (f", ETA {format_seconds(left)}" if left else ""))
            elif epochs_done():
                metrics = window.reduce(ctx, task)
                metrics.update(lr=scheduler_lr(engine), step=state["step"], epoch=state["epoch"])
                if valid is not None:
                    metrics.update(evaluate(task, engine, valid, cfg, ctx))
                    selection.update(metrics, state, engine)
                report(metrics, save=True)
                last = metrics
            done = state.get("stopped", False) or epochs_done()
            epoch_start = time.perf_counter()
        stream.close()
    tracker.finish()
    return last


def _maybe_inject_failure(faults: Faults, ctx: WorkerContext, step: int, run_dir: Path) -> None:
    """Faults.fail_once_at_step: one simulated worker crash per run (a marker file remembers it)."""
    if step != faults.fail_once_at_step or ctx.rank != ctx.world_size - 1:
        return
    marker = run_dir / f".injected_failure_{step}"
    if not marker.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at step {step} (Faults.fail_once_at_step)")


class _Selection:
    """Best model on a validation metric, and patience (counted in evaluations)."""

    def __init__(self, train_cfg):
        self.metric, self.mode, self.patience = train_cfg.select_metric, train_cfg.select_mode, train_cfg.patience
        self.active = bool(self.metric)
        self.best: dict | None = None  # {"value", "step", "epoch"}
        self.stale = 0  # evaluations since the best
        self.weights: dict | None = None  # consolidated weights of the best model (CPU)

    def restore(self, state: dict, checkpoint_dir: Path) -> None:
        from safetensors.torch import load_file

        self.best, self.stale = state.get("best"), state.get("evals_since_best", 0)
        if self.active and self.best is not None:
            self.weights = load_file(str(Path(checkpoint_dir) / "model.safetensors"))

    def update(self, metrics: dict, state: dict, engine) -> bool:
        """Take one evaluation's metrics; True when patience has run out. Collective (all ranks)."""
        if not self.active:
            return False
        key = f"eval_{self.metric}"
        if key not in metrics:
            raise KeyError(f"train.select_metric: the evaluation reports no {key!r} "
                           f"(it has {', '.join(k for k in metrics if k.startswith('eval_'))})")
        value = float(metrics[key])
        better = (self.best is None or (value < self.best["value"] if self.mode == "min" else value > self.best["value"]))
        if better:
            self.best = {"value": value, "step": state["step"], "epoch": state["epoch"]}
            self.stale = 0
            self.weights = ckpt.consolidated_state_dict(engine)
        else:
            self.stale += 1
        state["best"], state["evals_since_best"] = self.best, self.stale
        return bool(self.patience) and self.stale >= self.patience

    def summary(self) -> dict:
        if not self.active or self.best is None:
            return {}
        return {f"best_eval_{self.metric}": self.best["value"], "best_step": self.best["step"],
                "best_epoch": self.best["epoch"], "evals_since_best": self.stale}


def scheduler_lr(engine) -> float:
    return float(engine.get_lr()[0])


def _grad_norm(engine):
    """The step's gradient norm as DeepSpeed keeps it (a device tensor or a float), read at reports."""
    norm = engine.get_global_grad_norm()
    return norm if norm is not None else float("nan")


def _on_host_later(value):
    """A log value to add up: device tensors stay where they are (float64), so that logging a step
    does not wait for the GPU to finish it; `_Window.reduce` reads the sums once per report."""
    return value.detach().double() if torch.is_tensor(value) else float(value)


class _Window:
    """Sums of task logs, residues and time since the last report. On a GPU the sums stay on the
    device until `reduce`: reading them every step would make the host wait for each step to end
    before it makes the next batch (measured on an H100: docs/benchmarks.md)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: dict[str, list[float]] = {}
        self.residues = 0
        self.padded = 0
        self.grad_norms: list = []  # per step: a device tensor or a float (_grad_norm)
        self.start = time.perf_counter()

    def add(self, logs, residues: int, padded: int):
        for name, (total, count) in logs.items():
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] = acc[0] + _on_host_later(total)
            acc[1] = acc[1] + _on_host_later(count)
        self.residues += residues
        self.padded += padded

    def reduce(self, ctx: WorkerContext, task) -> dict:
        names = sorted(self.sums)
        values = [float(v) for n in names for v in self.sums[n]] + [self.residues, self.padded]
        t = torch.tensor(values, dtype=torch.float64)
        if ctx.world_size > 1:
            t = t.to(_collective_device(ctx))
            torch.distributed.all_reduce(t)
            t = t.cpu()
        seconds = time.perf_counter() - self.start
        # a log with nothing to count on any rank (e.g. Q8 of a set without 8-state labels) is left out
        means = {n: t[2 * i].item() / t[2 * i + 1].item() for i, n in enumerate(names) if t[2 * i + 1].item() > 0}
        out = task.summarize(means)
        residues, padded = t[-2].item(), t[-1].item()
        norms = [float(g) for g in self.grad_norms]
        out.update(residues=residues, residues_per_s=residues / max(seconds, 1e-9),
                   padding_efficiency=residues / max(padded, 1),
                   grad_norm=float(np.nanmean(norms)) if np.isfinite(norms).any() else float("nan"))
        self.reset()
        return out


def evaluate(task, engine, feed: Feed, cfg: ExperimentConfig, ctx: WorkerContext) -> dict:
    """Mean task logs over the whole evaluation set (split over ranks), prefixed with 'eval_'.

    Selection and early stopping (train.select_metric, train.patience) act on these numbers, so a
    task that selects must evaluate on a validation split only; a stage that watches its test sets
    during training (multitask does) must leave train.select_metric empty."""
    plan = feed.plan(EVAL_EPOCH)
    window = _Window()
    if ctx.world_size > 1:
        # Buffers (batch norm running statistics) are updated by each rank on its own batches and
        # DeepSpeed does not synchronise them: without this each rank would evaluate its share with a
        # different model, and the model that selection keeps and exports (rank 0's) would not be the
        # one whose score was reported. Rank 0's buffers, as DDP's broadcast_buffers does.
        for buffer in engine.module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
    engine.eval()
    with torch.no_grad():
        for ready in feed.batches(plan, EVAL_EPOCH):
            if ready.repeated:
                continue  # another rank's rows, read only because this rank had none
            tensors = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in ready.tensors.items()}
            _, logs = task.loss(engine, tensors)
            window.add(logs, ready.residues, ready.padded)
    engine.train()
    reduced = window.reduce(ctx, task)
    return {f"eval_{k}": v for k, v in reduced.items()
            if k not in ("residues_per_s", "grad_norm", "padding_efficiency")}


EVAL_EPOCH = 10**6  # the plan and rng "epoch" of evaluation passes (always the same batches)


def _agreement(ctx: WorkerContext):
    """`agree(values, op)`: integers reduced over ranks ("max" or "sum"), for equal step counts."""
    def agree(values: list[int], op: str) -> list[int]:
        if ctx.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=_collective_device(ctx))
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
        return t.cpu().tolist()
    return agree


def _collective_device(ctx: WorkerContext) -> torch.device:
    return ctx.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def _resume_dir(ctx: WorkerContext, run_dir: Path) -> Path | None:
    if ctx.under_ray:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if checkpoint.filesystem.type_name == "local":
            return Path(checkpoint.path)
        return Path(checkpoint.to_directory())  # object storage (s3://, gs://): a local copy to load from
    return ckpt.latest_checkpoint(run_dir)


def _checkpoint(engine, task, cfg, ctx: WorkerContext, state: dict, metrics: dict, run_dir: Path, commit: str,
                weights: dict | None = None):
    """`weights`: the export's weights when they are not the current model's (the selected best)."""
    export_config = {**task.export_config(), "git_commit": commit,
                     "train": {"step": state["step"], "residues_seen": state["residues_seen"],
                               "world_size": ctx.world_size, "config": to_dict(cfg),
                               "selected": state.get("best")}}
    name = ckpt.checkpoint_name(state["step"])
    if not ctx.under_ray:
        target = run_dir / name
        ckpt.save_checkpoint(engine, target, state=dict(state), export_config=export_config, task=task, rank=0,
                             weights=weights)
        ckpt.prune_checkpoints(run_dir, cfg.ray.num_to_keep)
        return
    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-rank{ctx.rank}-"))
    try:
        ckpt.save_checkpoint(engine, tmp, state=dict(state), export_config=export_config, task=task,
                             rank=ctx.rank, weights=weights)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         checkpoint_dir_name=name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
