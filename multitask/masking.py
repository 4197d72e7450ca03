"""Corruption for the masked-LM objective.

`bert`: pick `rate` (15%) of the real residues; of those 80% become <mask>, 10% a random standard
residue, 10% stay; the loss covers the picked positions only.
`random`: ProteinBERT-style: `rate` (5%) of the real residues become a random standard residue and
the loss covers every real residue (the model must also tell which ones were changed).
Padding is never picked: selection is drawn only where `position < length`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from data_prep.vocab import MASK_ID, STANDARD_IDS

IGNORE = -100
_FIRST_STD, _N_STD = int(STANDARD_IDS[0]), len(STANDARD_IDS)


@dataclass
class MaskingConfig:
    mode: Literal["bert", "random"] = "bert"  # bert (mask/random/keep of selected positions) or random (ProteinBERT random replacement)
    rate: float = 0.15  # fraction of real residues selected (bert) or replaced (random)
    mask_fraction: float = 0.8  # bert: share of selected positions replaced by <mask>
    random_fraction: float = 0.1  # bert: share of selected positions replaced by a random residue (the rest stay unchanged)


def real_positions(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(tokens.device)[:, None]


def mask_tokens(tokens: torch.Tensor, lengths: torch.Tensor, cfg: MaskingConfig,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted tokens, MLM targets with IGNORE where no loss)."""
    real = real_positions(tokens, lengths)
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    random_ids = torch.randint(_FIRST_STD, _FIRST_STD + _N_STD, tokens.shape, generator=generator,
                               device=tokens.device, dtype=tokens.dtype)
    picked = real & (u < cfg.rate)
    corrupted = tokens.clone()
    if cfg.mode == "random":
        corrupted[picked] = random_ids[picked]
        targets = torch.where(real, tokens.long(), IGNORE)
        return corrupted, targets
    # Reuse u, rescaled inside the picked interval, to split picked positions 80/10/10.
    v = u / cfg.rate
    to_mask = picked & (v < cfg.mask_fraction)
    to_random = picked & (v >= cfg.mask_fraction) & (v < cfg.mask_fraction + cfg.random_fraction)
    corrupted[to_mask] = MASK_ID
    corrupted[to_random] = random_ids[to_random]
    targets = torch.where(picked, tokens.long(), IGNORE)
    return corrupted, targets
