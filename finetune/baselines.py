"""The papers' baselines: MLP on mean-pooled embeddings, annotation transfer, majority class."""
from __future__ import annotations

import numpy as np
import torch

from .heads import ClassifierMLP


class PooledMLP(torch.nn.Module):
    """The LA classifier MLP applied to the per-protein mean embedding."""

    def __init__(self, dim: int, hidden: int = 32, dropout: float = 0.25, membrane_head: bool = True):
        super().__init__()
        self.mlp = ClassifierMLP(dim, hidden, dropout, membrane_head)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.mlp(batch["pooled"].to(self.mlp.location.weight.dtype))


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, block: int = 512) -> np.ndarray:
    """Index of the L1-nearest reference row for every query row (blocks bound the memory)."""
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    out = []
    for start in range(0, len(query), block):
        q = torch.from_numpy(np.ascontiguousarray(query[start: start + block], dtype=np.float32))
        out.append(torch.cdist(q, ref, p=1).argmin(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def annotation_transfer(train_pooled: np.ndarray, train_labels: np.ndarray, test_pooled: np.ndarray) -> np.ndarray:
    """Each test protein takes the label of its L1-nearest labelled training protein."""
    labelled = np.flatnonzero(train_labels >= 0)
    return train_labels[labelled][nearest_neighbours(test_pooled, train_pooled[labelled])]


def majority_class(train_labels: np.ndarray) -> int:
    """The most frequent label >= 0 of the training set."""
    labelled = train_labels[train_labels >= 0]
    return int(np.bincount(labelled).argmax())
