"""Per-task losses with missing labels masked out.

Every label tensor uses -1 (masked-LM: -100) for "no label here": padding, a residue without a
resolved structure, or a protein that has no label of that kind at all. Each loss is a sum over
labelled items divided by max(count, 1), so a task without labels in a batch gives exactly zero
loss and zero gradient (never NaN), while its head stays in the graph (DeepSpeed/DDP then see a
gradient, zero, for every parameter on every rank).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .masking import IGNORE

TASKS = ("mlm", "ss3", "ss8", "disorder", "location", "membrane", "go")


@dataclass
class TaskWeights:
    mlm: float = 1.0  # masked language model
    ss3: float = 1.0  # 3-state secondary structure (per residue)
    ss8: float = 1.0  # 8-state secondary structure (per residue; labels only where the data has them)
    disorder: float = 0.5  # disordered / unresolved residue (per residue, binary, classes balanced per batch)
    location: float = 1.0  # 10-class subcellular localization (per protein)
    membrane: float = 0.5  # membrane-bound vs soluble (per protein, binary; U excluded)
    go: float = 0.0  # GO multi-label (per protein; needs model.go_terms > 0)

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def _ce(logits: torch.Tensor, labels: torch.Tensor, ignore: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                            ignore_index=ignore, reduction="sum")
    return total, (labels != ignore).sum()


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = labels >= 0
    per = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).to(torch.float32),
                                             reduction="none")
    return (per * keep).sum(), keep.sum()


def _balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE with both classes weighted equally within the batch. Disordered residues are a few
    percent of the labelled ones: unweighted, the head learns to predict "ordered" everywhere
    (disorder MCC 0). Returned as (sum, count) like the others: the mean times the count."""
    keep = labels >= 0
    target = labels.clamp(min=0).to(torch.float32)
    per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    pos, neg = keep & (target > 0), keep & (target == 0)
    means = [(per * m).sum() / m.sum() for m in (pos, neg) if m.any()]
    n = keep.sum()
    mean = torch.stack(means).mean() if means else per.sum() * 0
    return mean * n, n


def task_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{task: (mean loss over labelled items, number of labelled items)} for tasks in the batch."""
    parts = {
        "mlm": _ce(out["mlm"], batch["mlm_targets"], IGNORE),
        "ss3": _ce(out["ss3"], batch["ss3"], -1),
        "ss8": _ce(out["ss8"], batch["ss8"], -1),
        "disorder": _balanced_bce(out["disorder"], batch["disorder"]),
        "location": _ce(out["location"], batch["location"], -1),
        "membrane": _bce(out["membrane"], batch["membrane"]),
    }
    if "go" in out and "go" in batch:
        parts["go"] = _bce(out["go"], batch["go"])
    return {k: (s / n.clamp(min=1), n) for k, (s, n) in parts.items()}


def total_loss(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], weights: TaskWeights) -> torch.Tensor:
    w = weights.as_dict()
    return sum(w[k] * loss for k, (loss, _) in parts.items())
