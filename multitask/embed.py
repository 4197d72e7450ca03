"""Per-residue embeddings from an exported multitask encoder (the contract in docs/contracts.md).

`load_embedder(export_dir)` reads EXPORT/model.safetensors + config.json (kind "encoder") and
returns an object whose `.embed(tokens, lengths)` gives [B, L, dim] float32. Which hidden states
are used comes from config.json "embedding" (set at export time, overridable here): `layers`
lists block outputs (0 = token embeddings, -1 = last block), each passed through the final
LayerNorm so that they share one scale, then averaged ("mean") or concatenated ("concat").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from data_prep.vocab import vocab_hash
from engine.checkpoint import CheckpointError, load_export
from engine.config import ConfigError

from .model import ModelConfig, MultitaskEncoder


@dataclass
class EmbeddingConfig:
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden states to use (0 = embeddings, -1 = last block)
    mix: Literal["mean", "concat"] = "mean"  # how several layers combine


class EncoderEmbedder:
    kind = "encoder"

    def __init__(self, model: MultitaskEncoder, embedding: EmbeddingConfig, device="cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        n = model.cfg.layers + 1
        for i in embedding.layers:
            if not -n <= i < n:
                raise ConfigError(f"embedding.layers: {i} is out of range for {model.cfg.layers} blocks")
        self.layers = [i % n for i in embedding.layers]
        self.mix = embedding.mix
        self.dim = model.cfg.dim * (len(self.layers) if self.mix == "concat" else 1)

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens, lengths = tokens.to(self.device).long(), lengths.to(self.device)
        last = self.model.cfg.layers
        if self.layers == [last]:
            h = self.model.encode(tokens, lengths)[0]
            return h[:, 1:].float()
        _, _, hidden = self.model.encode(tokens, lengths, return_layers=True)
        picked = [self.model.norm(hidden[i])[:, 1:] for i in self.layers]
        out = torch.stack(picked).mean(0) if self.mix == "mean" else torch.cat(picked, dim=-1)
        return out.float()


def load_model(export_dir: str | Path, device="cpu") -> tuple[MultitaskEncoder, dict]:
    """The encoder of an export (engine.checkpoint.load_export, strict state dict)."""
    config, state = load_export(export_dir, kind="encoder")
    if config.get("vocab_hash") not in (None, vocab_hash()):
        raise CheckpointError(f"{export_dir}/config.json: vocab_hash {config['vocab_hash']} differs from this "
                              f"code's {vocab_hash()}")
    model = MultitaskEncoder(ModelConfig(**config["model"]))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def load_embedder(export_dir: str | Path, device="cpu", layers: list[int] | None = None,
                  mix: str | None = None) -> EncoderEmbedder:
    model, config = load_model(export_dir, device)
    emb = EmbeddingConfig(**config.get("embedding", {}))
    if layers is not None:
        emb.layers = list(layers)
    if mix is not None:
        emb.mix = mix
    return EncoderEmbedder(model, emb, device)
