"""Training of a head on frozen embeddings: batches, early stopping, the best model kept.

`fit` runs in one plain process (rank 0 of 1) for debugging; `ray_train.py` runs the same
function on Ray Train workers (data parallel, DDP over gloo/NCCL), each taking every
world-th batch so all ranks run the same number of steps.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .baselines import PooledMLP
from .cnn import ResidueCNN
from .config import ModelConfig, TrainConfig
from .data import EmbeddingSet
from .extract import plan_batches
from .la import LightAttention


def build_head(cfg: ModelConfig, dim: int, tasks: tuple[str, ...] = ("ss3", "ss8", "disorder")) -> nn.Module:
    if cfg.head == "la":
        return LightAttention(dim, cfg.kernel_size, cfg.conv_dropout, cfg.hidden, cfg.dropout,
                              cfg.softmax, cfg.max_pool, cfg.membrane_head, cfg.membrane_weight)
    if cfg.head == "mlp":
        return PooledMLP(dim, cfg.hidden, cfg.dropout, cfg.membrane_head, cfg.membrane_weight)
    return ResidueCNN(dim, cfg.cnn_filters, cfg.cnn_window, cfg.dropout, tasks)


def epoch_batches(lengths: np.ndarray, cfg: TrainConfig, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of row indices. Bucketed: residue-budget batches of similar length (lengths are
    jittered by the rng so batch composition changes between epochs), in shuffled order.
    Not bucketed: a shuffled fixed-size split (padded to the longest row later)."""
    n = len(lengths)
    if not cfg.bucketed:
        order = rng.permutation(n) if rng is not None else np.arange(n)
        return [order[i: i + cfg.max_batch_size] for i in range(0, n, cfg.max_batch_size)]
    jitter = lengths * (1 + 0.1 * rng.random(n)) if rng is not None else lengths
    batches = plan_batches(jitter, cfg.batch_residues, cfg.max_batch_size)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def effective_lengths(data: EmbeddingSet, crop: int) -> np.ndarray:
    return np.minimum(data.lengths, crop) if crop > 0 else data.lengths


def _ends(a: np.ndarray, crop: int) -> np.ndarray:
    """First and last crop/2 residues (DeepLoc's cropping), or all of a short protein."""
    if crop <= 0 or len(a) <= crop:
        return a
    return np.concatenate([a[: crop // 2], a[len(a) - (crop - crop // 2):]])


def collate(data: EmbeddingSet, idx: np.ndarray, per_residue: bool, pooled_only: bool = False, crop: int = 0) -> dict:
    """Tensors of one batch: x [B, D, Lmax] (zero padding), mask [B, Lmax], pooled, labels.
    `crop` applies to per-protein heads only (per-residue labels need every residue)."""
    batch = {"pooled": torch.from_numpy(data.pooled[idx])}
    for name, values in data.labels.items():
        batch[name] = torch.from_numpy(values[idx])
    if pooled_only:
        return batch
    crop = 0 if per_residue else crop
    lengths = effective_lengths(data, crop)[idx]
    longest = int(lengths.max())
    x = np.zeros((len(idx), longest, data.dim), dtype=np.float32)
    for row, i in enumerate(idx):
        x[row, : lengths[row]] = _ends(data.residues[i], crop)
    batch["x"] = torch.from_numpy(x).transpose(1, 2)
    batch["mask"] = torch.arange(longest)[None, :] < torch.from_numpy(lengths)[:, None]
    if per_residue:
        for name, values in data.residue_labels.items():
            y = np.full((len(idx), longest), -1, dtype=np.int64)
            for row, i in enumerate(idx):
                if values[i] is not None:
                    y[row, : lengths[row]] = values[i]
            batch[name] = torch.from_numpy(y)
    return batch


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def is_per_residue(model: nn.Module) -> bool:
    return isinstance(getattr(model, "module", model), ResidueCNN)


@torch.no_grad()
def predict(model: nn.Module, data: EmbeddingSet, cfg: TrainConfig) -> dict[str, list | np.ndarray]:
    """Eval-mode predictions: per protein [N] class ids, or per residue a list of [L] arrays."""
    core = getattr(model, "module", model)
    core.eval()
    per_residue = is_per_residue(core)
    pooled_only = isinstance(core, PooledMLP)
    out: dict[str, list] = {}
    order = []
    for idx in epoch_batches(effective_lengths(data, 0 if per_residue else cfg.crop), cfg, None):
        batch = collate(data, idx, per_residue, pooled_only, cfg.crop)
        with _autocast(cfg.bf16):
            logits = core.predict(batch)
        for name, value in logits.items():
            labels = value.float().argmax(-1).numpy()
            if per_residue:
                out.setdefault(name, []).extend(labels[row, : data.lengths[i]] for row, i in enumerate(idx))
            else:
                out.setdefault(name, []).append(labels)
        order.append(idx)
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if per_residue:
        return {name: [values[j] for j in inverse] for name, values in out.items()}
    return {name: np.concatenate(values)[inverse] for name, values in out.items()}


@torch.no_grad()
def validation_loss(model: nn.Module, data: EmbeddingSet, cfg: TrainConfig) -> float:
    core = getattr(model, "module", model)
    core.eval()
    per_residue, pooled_only = is_per_residue(core), isinstance(core, PooledMLP)
    total, weight = 0.0, 0
    for idx in epoch_batches(effective_lengths(data, 0 if per_residue else cfg.crop), cfg, None):
        with _autocast(cfg.bf16):
            loss = core(collate(data, idx, per_residue, pooled_only, cfg.crop))
        total += float(loss) * len(idx)
        weight += len(idx)
    return total / max(weight, 1)


def train_epoch(model: nn.Module, optimizer, train: EmbeddingSet, cfg: TrainConfig, rng: np.random.Generator,
                rank: int = 0, world: int = 1) -> float:
    """One pass over this rank's share of the batches; returns the mean training loss."""
    core = getattr(model, "module", model)
    per_residue, pooled_only = is_per_residue(core), isinstance(core, PooledMLP)
    model.train()
    batches = epoch_batches(effective_lengths(train, 0 if per_residue else cfg.crop), cfg, rng)
    usable = len(batches) // world * world or world
    mine = [batches[i % len(batches)] for i in range(rank, usable, world)]
    total = 0.0
    for idx in mine:
        if len(idx) < 2 and not per_residue:
            idx = np.concatenate([idx, idx])  # batch norm needs two rows in training mode
        with _autocast(cfg.bf16):
            loss = model(collate(train, idx, per_residue, pooled_only, cfg.crop))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(len(mine), 1)


@dataclass
class FitResult:
    best_state: dict
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def fit(model: nn.Module, train: EmbeddingSet, valid: EmbeddingSet, cfg: TrainConfig, seed: int,
        rank: int = 0, world: int = 1, log=None) -> FitResult:
    """Train with early stopping on the validation loss; returns the best weights.

    With world > 1, `model` must already be wrapped in DDP; every rank builds the same batch
    plan (same seed) and takes batches rank, rank + world, ... (equal counts on all ranks).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    core = getattr(model, "module", model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = FitResult(copy.deepcopy(core.state_dict()), -1, float("inf"), 0, 0.0)
    start, stale = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        train_loss = train_epoch(model, optimizer, train, cfg, rng, rank, world)
        val_loss = validation_loss(model, valid, cfg)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        best.history.append(record)
        if log is not None and rank == 0:
            log(record)
        if val_loss < best.best_val_loss:
            best.best_state, best.best_epoch, best.best_val_loss = copy.deepcopy(core.state_dict()), epoch, val_loss
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    best.epochs_run = len(best.history)
    best.seconds = time.perf_counter() - start
    core.load_state_dict(best.best_state)
    return best
