"""Per-residue embeddings from an exported biLSTM LM (the contract in docs/contracts.md).

`load_embedder(export_dir)` reads EXPORT/model.safetensors + config.json (kind "bilstm") and
returns an object whose `.embed(tokens, lengths)` gives [B, L, dim] float32. The layers are
0 = the input representation (embedding / projection, duplicated for the two directions as
SeqVec does with its char-CNN output), 1 = LSTM layer 1, 2 = LSTM layer 2 (residual output),
each with forward and backward concatenated; they are summed (SeqVec) or concatenated (PEvoLM)
as config.json "embedding" says (overridable here). Any length works: the LSTMs run over time
chunks carrying their state, which is exact and keeps memory bounded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from data_prep.vocab import vocab_hash
from engine.checkpoint import CheckpointError, load_export
from engine.config import ConfigError, from_dict

from .config import EmbeddingConfig
from .model import BiLSTMConfig, BiLSTMLM


class BiLSTMEmbedder:
    kind = "bilstm"

    def __init__(self, model: BiLSTMLM, embedding: EmbeddingConfig, device="cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.embedding = embedding
        widths = [model.d_input * 2, model.cfg.proj * 2, model.cfg.proj * 2]
        chosen = [widths[i] for i in embedding.layers]
        if embedding.combine == "sum" and len(set(chosen)) > 1:
            raise ConfigError(f"embedding.combine: 'sum' needs equal layer sizes, got {chosen}")
        self.dim = sum(chosen) if embedding.combine == "concat" else chosen[0]

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] (residue ids, PAD-padded), lengths [B] -> [B, L, dim] float32."""
        tokens = tokens.to(self.device).long()
        lengths = lengths.to(self.device).long()
        states = self.model.layer_states(tokens, lengths, chunk=self.embedding.chunk)
        chosen = [states[i].float() for i in self.embedding.layers]
        if self.embedding.combine == "concat":
            return torch.cat(chosen, dim=-1)
        return torch.stack(chosen).sum(0)


def load_embedder(export_dir: str | Path, device: str = "cpu", embedding: dict | None = None) -> BiLSTMEmbedder:
    """An embedder from an export directory; `embedding` overrides config.json's "embedding"."""
    config, state = load_export(export_dir, kind="bilstm")
    if config.get("vocab_hash") not in (None, vocab_hash()):
        raise CheckpointError(f"{export_dir}/config.json: vocabulary hash {config['vocab_hash']} differs from "
                              f"this code's {vocab_hash()}")
    source = f"{export_dir}/config.json"
    model_cfg = from_dict(BiLSTMConfig, config["model"], source, "model.")
    emb_cfg = from_dict(EmbeddingConfig, {**config.get("embedding", {}), **(embedding or {})}, source, "embedding.")
    model = BiLSTMLM(model_cfg)
    model.load_state_dict(state, strict=True)
    return BiLSTMEmbedder(model, emb_cfg, device)


def mean_embedding(per_residue: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-protein mean over real residues: [B, L, D], [B] -> [B, D]."""
    L = per_residue.shape[1]
    mask = (torch.arange(L, device=per_residue.device)[None, :] < lengths.to(per_residue.device)[:, None])
    mask = mask.to(per_residue.dtype).unsqueeze(-1)
    return (per_residue * mask).sum(1) / mask.sum(1).clamp(min=1)
