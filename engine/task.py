"""What a training stage plugs into the engine: a `Task` subclass.

The engine owns the loop (DeepSpeed, batching, checkpoints, W&B, Ray); a task owns the model,
how rows become tensors, and the loss. See docs/engine.md, "How to plug in a new task".
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from .sources import Mixture, Source

# name -> (sum over the batch, count): the engine adds both over steps and ranks and reports
# sum / count, so means are exact however batches and ranks are sized.
Logs = dict[str, tuple[torch.Tensor, torch.Tensor | float]]


class Task(ABC):
    kind: str = "model"  # written to config.json "kind" of exports ("bilstm", "encoder", ...)
    columns: list[str] = ["tokens"]  # shard columns `collate` needs ("length" is always read)

    def __init__(self, cfg):
        self.cfg = cfg  # the stage's ExperimentConfig subclass

    def train_data(self) -> Mixture:
        """What an epoch trains on: by default every row of `data.train` once."""
        return Mixture([Source(self.cfg.data.train, list(self.columns))])

    def eval_data(self) -> list[Source]:
        """Evaluation sets, each read whole every `train.eval_every` steps: by default `data.valid`."""
        return [Source(self.cfg.data.valid, list(self.columns))] if self.cfg.data.valid else []

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh model (same seed on every rank; DeepSpeed broadcasts rank 0's weights anyway)."""

    @abstractmethod
    def collate(self, rows: list[dict], starts: np.ndarray, lengths: np.ndarray,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Rows -> CPU tensors. Piece i is residues [starts[i], starts[i] + lengths[i]) of rows[i];
        per-residue columns must be sliced accordingly (binary columns arrive as uint8 arrays:
        view them as their dtype). rows[i]["source"] is the row's position in the task's sources.
        `rng` is seeded per (seed, epoch, batch, rank), so e.g. MLM masking is reproducible across
        resume. Runs in Ray Data tasks, so it must not depend on state built in the worker."""

    def collate_eval(self, rows: list[dict], starts: np.ndarray, lengths: np.ndarray,
                     rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Batches of `eval_data()`; the same as training batches unless a task needs otherwise
        (e.g. no masking)."""
        return self.collate(rows, starts, lengths, rng)

    @abstractmethod
    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        """Forward pass; returns the scalar loss to back-propagate and the logs to report.
        Return the same log names on every call and every rank (they are all-reduced)."""

    def summarize(self, means: dict[str, float]) -> dict[str, float]:
        """Derived metrics from the reduced means (e.g. perplexity = exp(ce))."""
        return means

    def export_config(self) -> dict:
        """config.json of an export, without "git_commit" and "train" (the engine adds them)."""
        from .config import to_dict
        return {"kind": self.kind, "model": to_dict(self.cfg.model) if hasattr(self.cfg, "model") else {}}

    def write_export_files(self, directory: Path) -> None:
        """Extra files an export needs besides weights and config (e.g. tokenizer.json)."""
