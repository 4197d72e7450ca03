"""Agreement of two PSSMs of one protein, as the profile benchmark and tests measure it.

Per residue, over the rows where the reference (PSI-BLAST) has information (a non-zero row):
KL(reference || other) and KL(reference || background). The ratio of their means is 0 when the
profiles agree and about 1 when the other engine knows no more than the background. A row where
the other engine has no information (or no PSSM at all) counts as the background, and the other
distribution is mixed with 1% background so that a residue it never saw gives a finite term.
"""
from __future__ import annotations

import numpy as np

from .profiles_msa import BACKGROUND

SMOOTHING = 0.01


def kl_sums(reference: np.ndarray, other: np.ndarray | None) -> tuple[float, float, int]:
    """(sum KL(ref || other), sum KL(ref || background), informative rows); percentages (L, 20)
    in PSSM column order; other None = no PSSM from that engine."""
    ref = np.asarray(reference, np.float64)
    rows = ref.sum(1) > 0
    if not rows.any():
        return 0.0, 0.0, 0
    if other is not None and np.shape(other) != ref.shape:
        raise ValueError(f"PSSM shapes differ: {ref.shape} vs {np.shape(other)}")
    p = ref[rows] / ref[rows].sum(1, keepdims=True)
    q = np.tile(BACKGROUND, (len(p), 1)) if other is None else np.asarray(other, np.float64)[rows]
    empty = q.sum(1) == 0
    q[empty] = BACKGROUND
    q = (1 - SMOOTHING) * q / q.sum(1, keepdims=True) + SMOOTHING * BACKGROUND
    with np.errstate(divide="ignore", invalid="ignore"):
        to_other = np.where(p > 0, p * np.log(p / q), 0.0).sum()
        to_background = np.where(p > 0, p * np.log(p / BACKGROUND), 0.0).sum()
    return float(to_other), float(to_background), int(rows.sum())
