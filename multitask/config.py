"""The multitask experiment config: the engine's sections plus model, masking, task weights, the
training mixture of shard directories, evaluation sets and the exported embedding."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.config import ExperimentConfig, check_rules, load_config

from .embed import EmbeddingConfig
from .losses import TaskWeights
from .masking import MaskingConfig
from .model import ModelConfig


@dataclass
class SourceConfig:
    path: str = ""  # a data_prep shard directory (kind sequences, deeploc or ss) with training rows
    weight: float = 1.0  # share of the epoch's proteins drawn from this source (relative to the others)
    splits: list[str] = field(default_factory=lambda: ["train", "valid"])  # rows of these `split` values train; split=test rows are an error


@dataclass
class MixtureConfig:
    sources: list[SourceConfig] = field(default_factory=list)  # unlabelled and labelled shards, mixed by weight
    proteins_per_epoch: int = 0  # proteins drawn per epoch across sources (0 = all rows of all sources once)
    protein_crop: Literal["ends", "random"] = "ends"  # long proteins with per-protein labels: first+last halves (DBMTL) or a random window (ProteinBERT)


@dataclass
class EvalConfig:
    ss_test: str = ""  # ss shard dir with test rows (FLIP test, CB513, TS115, CASP12); "" = none
    deeploc_test: str = ""  # deeploc shard dir with the DeepLoc test rows; "" = none
    residues_per_batch: int = 16384  # residue budget of evaluation batches (whole proteins, never cropped)
    protein_max_length: int = 0  # final evaluation of per-protein sets (DeepLoc): proteins longer than this keep their first + last halves, as in training (0 = whole proteins)
    limit: int = 0  # during training (every train.eval_every steps) only N evenly spaced proteins of each set, cropped to data.max_length (0 = all); the final evaluation always uses all, whole


@dataclass
class MultitaskConfig(ExperimentConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    weights: TaskWeights = field(default_factory=TaskWeights)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)


def check_values(cfg: MultitaskConfig, source: str = "<config>") -> None:
    """Range checks of the multitask sections; each error names its key."""
    m = cfg.model
    rules = [
        ("model.dim", m.dim > 0 and m.dim % m.heads == 0 and (m.dim // m.heads) % 2 == 0,
         f"must split into model.heads={m.heads} heads of even width"),
        ("model.layers", m.layers >= 1, "must be >= 1"),
        ("model.dropout", 0 <= m.dropout < 1, "must be in [0, 1)"),
        ("model.go_terms", m.go_terms >= 0, "must be >= 0"),
        ("model.conv_kernel", m.conv_kernel == 0 or (m.conv_kernel > 0 and m.conv_kernel % 2 == 1),
         "must be 0 (no convolution) or odd"),
        ("masking.rate", 0 < cfg.masking.rate < 1, "must be in (0, 1)"),
        ("masking.mask_fraction", 0 <= cfg.masking.mask_fraction <= 1, "must be in [0, 1]"),
        ("masking.random_fraction", 0 <= cfg.masking.random_fraction <= 1 - cfg.masking.mask_fraction,
         "must be in [0, 1 - masking.mask_fraction]"),
        ("weights.go", cfg.weights.go == 0 or m.go_terms > 0, "needs model.go_terms > 0"),
        ("mixture.sources", len(cfg.mixture.sources) > 0, "must list at least one shard directory"),
        ("mixture.proteins_per_epoch", cfg.mixture.proteins_per_epoch >= 0, "must be >= 0"),
        ("eval.residues_per_batch", cfg.eval.residues_per_batch >= 1, "must be >= 1"),
        ("eval.protein_max_length", cfg.eval.protein_max_length == 0 or cfg.eval.protein_max_length >= 2, "must be 0 or >= 2"),
    ]
    for name, value in cfg.weights.as_dict().items():
        rules.append((f"weights.{name}", value >= 0, "must be >= 0"))
    for i, s in enumerate(cfg.mixture.sources):
        rules += [(f"mixture.sources[{i}].path", bool(s.path), "must name a shard directory"),
                  (f"mixture.sources[{i}].weight", s.weight > 0, "must be > 0"),
                  (f"mixture.sources[{i}].splits", "test" not in s.splits, "must not contain test (test rows never train)")]
    for i in cfg.embedding.layers:
        rules.append(("embedding.layers", -(m.layers + 1) <= i <= m.layers, f"{i} is out of range for {m.layers} blocks"))
    rules += [("data.long_proteins", cfg.data.long_proteins == "crop",
               "must be crop: multitask trains one piece per protein (mixture.protein_crop picks it for labelled proteins)"),
              ("data.train", not cfg.data.train, "leave empty: multitask trains on mixture.sources"),
              ("data.valid", not cfg.data.valid, "leave empty: multitask evaluates on eval.ss_test / eval.deeploc_test")]
    check_rules(rules, source)


def load(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> MultitaskConfig:
    cfg = load_config(MultitaskConfig, path, overrides)
    check_values(cfg, str(path) if path else "<config>")
    return cfg
