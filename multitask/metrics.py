"""Task metrics from accumulated counts: Q3/Q8 (per-residue accuracy), disorder MCC, Q10 and Q2.
The formulas are engine.metrics' (the project's one metrics module); this file only accumulates.

Counts (confusion matrices) are accumulated batch by batch so that a metric over a whole test set
is exact, not an average of per-batch values, and so that ranks can sum them.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.metrics import accuracy, gorodkin_mcc


class Confusion:
    """Confusion matrix over items whose label is >= 0 (and inside `keep` when given)."""

    def __init__(self, classes: int):
        self.m = np.zeros((classes, classes), dtype=np.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor, keep: torch.Tensor | None = None):
        sel = label >= 0
        if keep is not None:
            sel &= keep
        p, y = pred[sel].cpu().numpy().astype(np.int64), label[sel].cpu().numpy().astype(np.int64)
        np.add.at(self.m, (y, p), 1)

    @property
    def count(self) -> int:
        return int(self.m.sum())

    def accuracy(self) -> float:
        return accuracy(self.m.astype(np.float64))

    def mcc(self) -> float:
        """Matthews correlation (Gorodkin's R_K; binary: class 1 positive); 0 for a constant predictor."""
        return gorodkin_mcc(self.m.astype(np.float64))


def summarize(confusions: dict[str, Confusion]) -> dict[str, float]:
    """The reported metric per task: accuracy (Q3, Q8, Q10, Q2) or MCC (disorder)."""
    out = {}
    names = {"ss3": "q3", "ss8": "q8", "location": "q10", "membrane": "q2"}
    for task, c in confusions.items():
        if c.count == 0:
            continue
        if task == "disorder":
            out["disorder_mcc"] = c.mcc()
        else:
            out[names.get(task, task)] = c.accuracy()
        out[f"n_{task}"] = c.count
    return out
