"""Joint loss of the biLSTM LM: w_ce * CE(next residue) + w_kl * KL(p_pssm || q_model).

Both directions are scored on the same pairs of neighbours (j, j+1) of each sequence: the forward
state at j predicts residue / PSSM column j+1, the backward state at j+1 predicts j. CE ignores
padding; KL counts only positions whose target PSSM row carries information (not all zero) in
proteins that have a PSSM, so proteins without one contribute CE only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import reverse_within

from data_prep.pssm_format import PSSM_TO_STANDARD  # the PSSM column order -> the vocabulary's


@dataclass
class LossConfig:
    w_ce: float = 0.25  # weight of the next-residue cross-entropy
    w_kl: float = 0.75  # weight of KL(PSSM relative frequencies || predicted column)


def pssm_probabilities(percent: np.ndarray, zero_row: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 percentages [L*20 or L x 20] in PSI-BLAST order -> (probabilities [L, 20] in the
    vocabulary's ACDEFGHIKLMNPQRSTVWY order, informative-row mask [L])."""
    p = np.asarray(percent, dtype=np.float32).reshape(-1, 20)[:, PSSM_TO_STANDARD]
    total = p.sum(axis=1)
    ok = total > 0
    if zero_row is not None:
        ok &= ~np.asarray(zero_row, dtype=bool)
    p[ok] /= total[ok, None]
    p[~ok] = 0.0
    return p, ok


def neighbour_pairs(logits: torch.Tensor, lengths: torch.Tensor):
    """Split direction-layout outputs [2B, L, C] into aligned (forward, backward) predictions.

    Returns (fwd [B, L-1, C], bwd [B, L-1, C], valid [B, L-1]) where fwd[:, j] predicts position
    j+1 and bwd[:, j] predicts position j; valid[:, j] means j+1 < length."""
    B = logits.shape[0] // 2
    f = logits[:B]
    b = reverse_within(logits[B:], lengths)
    L = logits.shape[1]
    valid = torch.arange(L - 1, device=logits.device).unsqueeze(0) + 1 < lengths.to(logits.device).unsqueeze(1)
    return f[:, :-1], b[:, 1:], valid


def lm_loss(logits: torch.Tensor, pssm_logq: torch.Tensor | None, tokens: torch.Tensor, lengths: torch.Tensor,
            pssm: torch.Tensor | None, pssm_mask: torch.Tensor | None, cfg: LossConfig):
    """Returns (joint loss, logs) with logs as {name: (sum, count)} for the engine."""
    fwd, bwd, valid = neighbour_pairs(logits.float(), lengths)
    targets_f, targets_b = tokens[:, 1:], tokens[:, :-1]
    ce_sum = (F.cross_entropy(fwd[valid], targets_f[valid], reduction="sum")
              + F.cross_entropy(bwd[valid], targets_b[valid], reduction="sum"))
    n_ce = 2 * valid.sum()
    ce = ce_sum / n_ce.clamp(min=1)
    kl_sum = ce_sum.new_zeros(())
    n_kl = torch.zeros((), dtype=torch.long, device=logits.device)
    if pssm_logq is not None and pssm is not None:
        qf, qb, _ = neighbour_pairs(pssm_logq, lengths)
        mf = valid & pssm_mask[:, 1:]
        mb = valid & pssm_mask[:, :-1]
        kl_sum = _kl(pssm[:, 1:][mf], qf[mf]) + _kl(pssm[:, :-1][mb], qb[mb])
        n_kl = mf.sum() + mb.sum()
    kl = kl_sum / n_kl.clamp(min=1)
    joint = cfg.w_ce * ce + cfg.w_kl * kl
    logs = {"ce": (ce_sum.detach(), n_ce), "kl": (kl_sum.detach(), n_kl),
            "loss": (joint.detach(), 1.0)}
    return joint, logs


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over rows of KL(p || q) = sum_j p_j (log p_j - log q_j), with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q).sum()
