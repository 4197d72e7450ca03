"""Held-out next-residue cross-entropy of an exported biLSTM LM, next to the unigram baseline.

`python -m pretrain eval --model EXPORT --data HELDOUT --train TRAIN [--out JSON]`. The CE is
the training loss's CE term (both directions, every predicted position of whole proteins, no
dropout); the baseline predicts every residue from the residue frequencies of the training
shards (add-one smoothed). A model that learned anything beyond composition is below it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from data_prep.shards import read_table
from data_prep.vocab import PAD_ID
from engine.batching import pack_batches, pad_stack
from engine.sources import residue_arrays

from .embed import load_embedder
from .losses import LossConfig, lm_loss, neighbour_pairs


def token_rows(data_dir: str | Path) -> list[np.ndarray]:
    """The `tokens` of every row of a shard directory."""
    flat, off, _ = residue_arrays(read_table(data_dir, ["tokens"])["tokens"], np.uint8)
    return [flat[off[i]:off[i + 1]].astype(np.int64) for i in range(len(off) - 1)]


def unigram_log_probs(rows: list[np.ndarray], vocab_size: int) -> np.ndarray:
    counts = np.bincount(np.concatenate(rows), minlength=vocab_size).astype(np.float64) + 1.0
    counts[PAD_ID] = 0.0
    return np.log(np.where(counts > 0, counts / counts.sum(), 1.0))


@torch.no_grad()
def heldout_cross_entropy(model_dir: str | Path, data_dir: str | Path, train_dir: str | Path,
                          residues_per_batch: int = 16384) -> dict:
    embedder = load_embedder(model_dir)
    model = embedder.model.eval()
    rows = [r for r in token_rows(data_dir) if len(r) >= 2]
    lengths = np.array([len(r) for r in rows])
    ce_sum, n = 0.0, 0
    logp = torch.from_numpy(unigram_log_probs(token_rows(train_dir), model.cfg.vocab_size))
    uni_sum = 0.0
    cfg = LossConfig(w_ce=1.0, w_kl=0.0)
    for batch in pack_batches(lengths, max(residues_per_batch, int(lengths.max())), len(rows), 1.0,
                              np.random.default_rng(0)):
        tokens = torch.from_numpy(pad_stack([rows[i] for i in batch], PAD_ID, int(lengths[batch].max())))
        lens = torch.from_numpy(lengths[batch])
        logits, _ = model(tokens, lens)
        _, logs = lm_loss(logits, None, tokens, lens, None, None, cfg)
        ce_sum += float(logs["ce"][0])
        n += int(logs["ce"][1])
        # the baseline scores the same positions: each direction predicts all but one residue
        _, _, valid = neighbour_pairs(torch.zeros(2 * len(batch), tokens.shape[1], 1), lens)
        uni_sum += -float(logp[tokens[:, 1:][valid]].sum() + logp[tokens[:, :-1][valid]].sum())
    ce, uni = ce_sum / n, uni_sum / n
    return {"proteins": len(rows), "predictions": n, "ce": ce, "perplexity": math.exp(ce),
            "unigram_ce": uni, "unigram_perplexity": math.exp(uni), "ce_minus_unigram": ce - uni,
            "model": str(model_dir), "data": str(data_dir), "unigram_from": str(train_dir)}


def write(result: dict, out: str | Path | None) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    from engine.logs import result

    result(text)
