"""One-hot residue encoding: the embedding baseline, with the exported-model embedder interface."""
from __future__ import annotations

import torch

from data_prep.vocab import FIRST_RESIDUE_ID, STANDARD

ONEHOT_DIM = len(STANDARD) + 1  # 20 standard residues + one column for U, O, B, Z, X and unknown


class OneHotEmbedder:
    """`embed(tokens, lengths) -> [B, L, 21]`: one column per standard residue, one for the rest."""

    kind = "onehot"
    dim = ONEHOT_DIM

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    def embed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device).long()
        column = tokens - FIRST_RESIDUE_ID
        column = torch.where((column >= 0) & (column < len(STANDARD)), column,
                             torch.full_like(column, len(STANDARD)))
        out = torch.nn.functional.one_hot(column, ONEHOT_DIM).float()
        # Padding (and specials) get all-zero rows so they cannot leak into pooling.
        return out * (tokens >= FIRST_RESIDUE_ID).unsqueeze(-1)
