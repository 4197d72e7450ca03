"""The SeqVec per-residue CNN: two convolutions (32 filters, window 7) on frozen embeddings.

One shared first layer, one second-layer convolution per task (3-state and 8-state secondary
structure, disorder). A task whose labels are absent (-1) in a batch adds nothing to the loss.
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import masked_cross_entropy

RESIDUE_TASKS = {"ss3": 3, "ss8": 8, "disorder": 2}


class ResidueCNN(nn.Module):
    def __init__(self, dim: int, filters: int = 32, window: int = 7, dropout: float = 0.25,
                 tasks: tuple[str, ...] = ("ss3", "ss8", "disorder")):
        super().__init__()
        pad = window // 2
        self.first = nn.Sequential(nn.Conv1d(dim, filters, window, padding=pad), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({t: nn.Conv1d(filters, RESIDUE_TASKS[t], window, padding=pad) for t in tasks})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Logits [B, L, classes] per task."""
        x = batch["x"].to(self.first[0].weight.dtype)
        h = self.first(x) * batch["mask"].unsqueeze(1).to(x.dtype)  # padding stays zero for layer 2
        return {t: head(h).transpose(1, 2) for t, head in self.heads.items()}


def residue_loss(out: dict[str, torch.Tensor], batch: dict, weights: dict | None = None) -> torch.Tensor:
    """Sum over tasks of the mean cross-entropy of labelled residues (-1 = no label); `weights`
    maps a task to its class weights (disorder: inverse class frequency, see HeadTask.weights)."""
    loss = sum(v.float().sum() for v in out.values()) * 0.0  # keeps every parameter in the graph
    for task, logits in out.items():
        term = masked_cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[task].reshape(-1),
                                    (weights or {}).get(task))
        if term is not None:
            loss = loss + term
    return loss
