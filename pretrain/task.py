"""The pretrain stage as an engine Task: shard rows -> tensors -> joint CE + KL loss."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from data_prep.vocab import PAD_ID, save_tokenizer, vocab_hash
from engine.batching import pad_stack
from engine.config import to_dict
from engine.task import Task

from .losses import lm_loss, pssm_probabilities
from .model import BiLSTMLM


class BiLSTMTask(Task):
    kind = "bilstm"

    @property
    def columns(self) -> list[str]:
        # a CE-only model (no PSSM head) trains on plain sequence shards too
        return ["tokens", "pssm", "zero_row"] if self.cfg.model.pssm_head else ["tokens"]

    def build_model(self) -> BiLSTMLM:
        return BiLSTMLM(self.cfg.model)

    def collate(self, rows, starts, lengths, rng):
        return collate_rows(rows, starts, lengths)

    def loss(self, model, batch):
        logits, pssm_logq = model(batch["tokens"], batch["lengths"])
        return lm_loss(logits, pssm_logq, batch["tokens"], batch["lengths"], batch["pssm"],
                       batch["pssm_mask"], self.cfg.loss)

    def summarize(self, means):
        out = dict(means)
        if "ce" in means:  # a log is absent when nothing was counted (kl: no PSSM in the window)
            out["perplexity"] = math.exp(min(means["ce"], 50.0))
            if "kl" in means:
                out["joint"] = self.cfg.loss.w_ce * means["ce"] + self.cfg.loss.w_kl * means["kl"]
        return out

    def export_config(self):
        return {"kind": self.kind, "model": to_dict(self.cfg.model), "embedding": to_dict(self.cfg.embedding),
                "vocab_hash": vocab_hash()}

    def write_export_files(self, directory: Path):
        save_tokenizer(Path(directory))  # tokenizer.json + the transformers configs


def collate_rows(rows: list[dict], starts: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    """Pieces of rows -> tokens [B, L] (PAD-padded), lengths [B], PSSM probabilities [B, L, 20]
    (standard order) and the mask of positions with an informative PSSM row [B, L]."""
    L = int(max(lengths))
    tokens, pssms, masks = [], [], []
    for row, s, n in zip(rows, starts, lengths):
        s, n = int(s), int(n)
        tokens.append(np.asarray(row["tokens"][s:s + n], dtype=np.int64))
        if row.get("pssm") is None:
            pssms.append(np.zeros((n, 20), np.float32))
            masks.append(np.zeros(n, bool))
        else:
            zero = row.get("zero_row")
            p, ok = pssm_probabilities(row["pssm"][20 * s:20 * (s + n)], None if zero is None else zero[s:s + n])
            pssms.append(p)
            masks.append(ok)
    return {
        "tokens": torch.from_numpy(pad_stack(tokens, PAD_ID, L)),
        "lengths": torch.as_tensor(np.asarray(lengths, dtype=np.int64)),
        "pssm": torch.from_numpy(pad_stack(pssms, 0.0, L)),
        "pssm_mask": torch.from_numpy(pad_stack(masks, False, L)),
    }
