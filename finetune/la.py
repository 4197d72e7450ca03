"""Light attention (Staerk et al. 2021) over frozen per-residue embeddings.

Two 1D convolutions over length (kernel 9) turn the embeddings [B, D, L] into attention
coefficients e and values v. A softmax over length (per feature, padding masked) weights v;
the weighted sum is concatenated with the max over length of v and fed to a small MLP.
Ablations of the paper: `softmax=False` (masked mean of e*v instead of the attention-weighted
sum) and `max_pool=False` (the weighted sum alone).
"""
from __future__ import annotations

import torch
from torch import nn

from .heads import ClassifierMLP

NEG = -1e4  # fits bf16 and fp16: exp(NEG) is 0 after the softmax


class LightAttention(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 9, conv_dropout: float = 0.25, hidden: int = 32,
                 dropout: float = 0.25, softmax: bool = True, max_pool: bool = True,
                 membrane_head: bool = True):
        super().__init__()
        pad = kernel_size // 2
        self.values = nn.Conv1d(dim, dim, kernel_size, padding=pad)
        self.attention = nn.Conv1d(dim, dim, kernel_size, padding=pad)
        self.dropout = nn.Dropout(conv_dropout)
        self.softmax, self.max_pool = softmax, max_pool
        self.mlp = ClassifierMLP(dim * (2 if max_pool else 1), hidden, dropout, membrane_head)

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, D, L] (zero at padding), mask [B, L] (True = residue) -> features [B, D or 2D]."""
        v = self.dropout(self.values(x))
        e = self.attention(x)
        keep = mask.unsqueeze(1)
        if self.softmax:
            weights = torch.softmax(e.masked_fill(~keep, NEG).float(), dim=-1).to(v.dtype)
            pooled = (v * weights).sum(-1)
        else:
            pooled = (v * e * keep).sum(-1) / mask.sum(-1, keepdim=True).to(v.dtype)
        if not self.max_pool:
            return pooled
        return torch.cat([pooled, v.masked_fill(~keep, NEG).amax(-1)], dim=-1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Location (+ membrane) logits of batch["x"] [B, D, L] (zero padding), batch["mask"] [B, L]."""
        x = batch["x"].to(self.values.weight.dtype)  # bf16 under DeepSpeed bf16, else fp32
        return self.mlp(self.pool(x, batch["mask"]))
