"""The pretrain stage's config: the engine's sections plus model, loss and embedding."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.config import ConfigError, ExperimentConfig, load_config

from .losses import LossConfig
from .model import BiLSTMConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class EmbeddingConfig:
    layers: list[int] = field(default_factory=lambda: [0, 1, 2])  # 0 = input (embedding/projection), 1 = LSTM 1, 2 = LSTM 2
    combine: Literal["sum", "concat"] = "sum"  # sum of layers (SeqVec) or concatenation (PEvoLM)
    chunk: int = 4096  # run LSTMs over chunks of this many residues carrying state (exact; bounds memory)


@dataclass
class PretrainConfig(ExperimentConfig):
    model: BiLSTMConfig = field(default_factory=BiLSTMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)


def load(path: str | Path | None = None, overrides=(), data: dict | None = None) -> PretrainConfig:
    cfg = load_config(PretrainConfig, path, overrides, data)
    check(cfg, str(path or "<config>"))
    return cfg


def check(cfg: PretrainConfig, source: str) -> None:
    m, e = cfg.model, cfg.embedding
    if not e.layers or any(layer not in (0, 1, 2) for layer in e.layers):
        raise ConfigError(f"{source}: embedding.layers: must be a non-empty subset of 0, 1, 2")
    for key, value in (("model.hidden", m.hidden), ("model.proj", m.proj), ("model.embed_dim", m.embed_dim)):
        if value < 1:
            raise ConfigError(f"{source}: {key}: must be >= 1")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"{source}: model.dropout: must be in [0, 1)")
    if m.proj >= m.hidden:
        raise ConfigError(f"{source}: model.proj: must be smaller than model.hidden ({m.hidden})")
    d_input = m.input_proj or (m.embed_dim + (m.vocab_size if m.one_hot else 0))
    if e.combine == "sum" and 0 in e.layers and d_input != m.proj:
        raise ConfigError(f"{source}: embedding.combine: 'sum' with layer 0 needs the input size "
                          f"({d_input}) to equal model.proj ({m.proj}); set model.input_proj={m.proj} or use concat")
    if cfg.loss.w_ce < 0 or cfg.loss.w_kl < 0:
        raise ConfigError(f"{source}: loss: weights must be >= 0")
