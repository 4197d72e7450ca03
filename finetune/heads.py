"""What LA and the mean-pool MLP share: the small classifier and the per-protein losses."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

N_LOCATIONS = 10


class FloatBatchNorm1d(nn.BatchNorm1d):
    """Batch norm computed in fp32 whatever the input and parameter dtype: under bf16 DeepSpeed
    casts the parameters but keeps the running statistics (buffers) in fp32, and torch's kernel
    refuses the mix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x.float(), self.running_mean, self.running_var, self.weight.float(), self.bias.float(),
                            self.training, self.momentum, self.eps).to(x.dtype)


class ClassifierMLP(nn.Module):
    """Linear -> dropout -> ReLU -> batch norm -> location logits (+ membrane logits), as in LA."""

    def __init__(self, in_dim: int, hidden: int = 32, dropout: float = 0.25, membrane_head: bool = True):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.ReLU(), FloatBatchNorm1d(hidden))
        self.location = nn.Linear(hidden, N_LOCATIONS)
        self.membrane = nn.Linear(hidden, 2) if membrane_head else None

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.hidden(features)
        out = {"location": self.location(h)}
        if self.membrane is not None:
            out["membrane"] = self.membrane(h)
        return out


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor | None:
    """Mean cross-entropy over targets >= 0 (-1 = no label), weighted by class when `weight` is
    given (sum w_y * ce / sum w_y); None when the batch has no label."""
    valid = target >= 0
    if not bool(valid.any()):
        return None
    return F.cross_entropy(logits[valid].float(), target[valid], weight=weight)


def protein_loss(out: dict[str, torch.Tensor], batch: dict, membrane_weight: float = 1.0) -> torch.Tensor:
    """Location cross-entropy (+ membrane_weight x membrane cross-entropy) of per-protein logits.

    Location rows with location_id -1 (e.g. Cytoplasm-Nucleus) and membrane rows with U (-1)
    are left out of their loss. A zero-weighted term keeps every parameter in the graph (data
    parallel gradient reduction needs that) when a batch has no label of a kind."""
    loss = sum(v.float().sum() for v in out.values()) * 0.0
    location = masked_cross_entropy(out["location"], batch["location_id"])
    if location is not None:
        loss = loss + location
    if "membrane" in out and "membrane_id" in batch:
        membrane = masked_cross_entropy(out["membrane"], batch["membrane_id"])
        if membrane is not None:
            loss = loss + membrane_weight * membrane
    return loss
