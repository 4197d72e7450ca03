"""The finetune experiment config: the engine's sections (it trains through the engine) plus the
head (`model`), test-set evaluation (`data.test`, `train.seeds`, `train.bootstrap`) and `embed`.

Heads train like every other model of the project: `engine.launch` (Ray Train, `ray.num_workers`,
`ray.use_gpu`) or `engine.loop.run_plain`, with the engine's selection of the best model on the
validation loss (`train.select_metric: loss`) and early stopping (`train.patience`, counted in
evaluations, one per epoch with `train.eval_every_epoch`). The defaults below are those of a
small head on frozen embeddings; the YAML files in finetune/configs override them. Unknown keys
and bad values are `ConfigError`s that name the file and the dotted key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.config import (DataConfig, DeepSpeedSection, ExperimentConfig, LoopConfig, OptimConfig, check_rules,
                           load_config as engine_load_config)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class EmbedConfig:
    batch_residues: int = 16000  # residue budget of one forward batch (rows * longest length)
    max_batch_size: int = 64  # at most this many proteins in one forward batch
    chunk_residues: int = 4000  # longer proteins are embedded in overlapping windows of this size (0 = never: the model handles any length itself)
    chunk_overlap: int = 250  # residues shared by neighbouring windows (the seam is in its middle)
    num_actors: int = 1  # Ray Data actor pool size (one model per actor); capped so that a CPU stays free for the Parquet reads
    rows_per_task: int = 512  # rows handed to one map_batches call (rows arrive length-sorted)
    rows_per_shard: int = 2000  # rows per output Parquet file
    use_gpu: bool | None = None  # one GPU per actor; None = when the cluster has one
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # model compute dtype (float16 on GPU only)


@dataclass
class FinetuneData(DataConfig):
    # engine keys with the defaults of a head on embeddings: the LA paper's 150 proteins per batch
    # at most, whole proteins up to 4,000 residues (5 of DeepLoc's 1,678 training proteins are longer)
    residues_per_batch: int = 30000
    max_batch_size: int = 150
    max_length: int = 4000
    long_proteins: Literal["window", "crop"] = "crop"
    window_chunks: int = 64  # an embedding set is small: plan whole sets at once (better length grouping)
    test: str = ""  # embedding dir used for evaluation only (never trains, selects or stops)
    holdout_fraction: float = 0.1  # share of data.train held out (stratified, seeded) for selection when data.valid is ""
    split_seed: int = 0  # seed of the held-out split


@dataclass
class ModelConfig:
    head: Literal["la", "mlp", "cnn"] = "la"  # la | mlp (per protein) | cnn (per residue)
    kernel_size: int = 9  # LA: convolution width over length
    conv_dropout: float = 0.25  # LA: dropout on the convolution outputs
    hidden: int = 32  # width of the MLP hidden layer (LA and mean-pool MLP)
    dropout: float = 0.25  # dropout in the MLP
    softmax: bool = True  # LA: softmax over length (False = paper ablation: masked mean of e*v)
    max_pool: bool = True  # LA: concatenate the max over length of v (False = paper ablation)
    membrane_head: bool = True  # also predict membrane-bound vs soluble (U left out of the loss)
    membrane_weight: float = 1.0  # weight of the membrane loss next to the location loss
    protein_crop: Literal["ends", "random"] = "ends"  # per-protein heads, proteins longer than data.max_length: first + last halves (DeepLoc) or the engine's random window
    cnn_filters: int = 32  # CNN: filters of the first convolution (SeqVec: 32)
    cnn_window: int = 7  # CNN: window of both convolutions (SeqVec: 7)
    standardize: bool = True  # (x - mean) / std per embedding dimension, statistics from the training rows only (finetune/standardize.py); saved with the head
    balance_disorder: bool = True  # CNN: disorder cross-entropy weighted by inverse class frequency of the training residues


@dataclass
class FinetuneLoop(LoopConfig):
    max_steps: int = 10**9  # heads stop on epochs and patience, not steps
    max_epochs: int = 100
    log_every: int = 10**9  # one report per epoch (eval_every_epoch)
    checkpoint_every: int = 10**9  # one checkpoint per epoch (eval_every_epoch)
    eval_every_epoch: bool = True
    select_metric: str = "loss"  # validation loss, as the LA paper
    patience: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per seed (train.seed is set from these)
    bootstrap: int = 1000  # bootstrap resamples of the test set for standard errors
    bootstrap_seed: int = 0  # seed of the bootstrap


@dataclass
class HeadOptim(OptimConfig):
    lr: float = 1e-3  # Adam(W) learning rate (the LA recipe)
    warmup_steps: int = 0  # a head on frozen embeddings needs no warm-up
    decay: Literal["cosine", "linear", "constant"] = "constant"  # constant: epochs end by patience, not by a schedule


@dataclass
class HeadDeepSpeed(DeepSpeedSection):
    grad_clip: float = 0.0  # the LA recipe clips nothing


@dataclass
class FinetuneConfig(ExperimentConfig):
    data: FinetuneData = field(default_factory=FinetuneData)
    optim: HeadOptim = field(default_factory=HeadOptim)
    deepspeed: HeadDeepSpeed = field(default_factory=HeadDeepSpeed)
    train: FinetuneLoop = field(default_factory=FinetuneLoop)
    model: ModelConfig = field(default_factory=ModelConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)


def check_values(cfg: FinetuneConfig, source: str = "<config>") -> None:
    """Range checks of the finetune sections; each error names its key."""
    e, m = cfg.embed, cfg.model
    rules = [
        ("data.holdout_fraction", 0.0 <= cfg.data.holdout_fraction < 1.0, "must be in [0, 1)"),
        ("train.seeds", bool(cfg.train.seeds), "needs at least one seed"),
        ("train.bootstrap", cfg.train.bootstrap >= 0, "must be >= 0"),
        ("train.select_metric", bool(cfg.train.select_metric), "heads select their best epoch (e.g. loss)"),
        ("model.kernel_size", m.kernel_size >= 1 and m.kernel_size % 2 == 1, "must be odd and >= 1"),
        ("model.cnn_window", m.cnn_window >= 1 and m.cnn_window % 2 == 1, "must be odd and >= 1"),
        ("model.dropout", 0 <= m.dropout < 1, "must be in [0, 1)"),
        ("model.conv_dropout", 0 <= m.conv_dropout < 1, "must be in [0, 1)"),
        ("embed.batch_residues", e.batch_residues >= 1, "must be >= 1"),
        ("embed.chunk_residues", e.chunk_residues >= 0, "must be >= 0"),
        ("embed.chunk_overlap", e.chunk_overlap < e.chunk_residues or e.chunk_residues == 0, "must be < embed.chunk_residues"),
        ("embed.num_actors", e.num_actors >= 1, "must be >= 1"),
        ("embed.rows_per_task", e.rows_per_task >= 1, "must be >= 1"),
        ("embed.rows_per_shard", e.rows_per_shard >= 1, "must be >= 1"),
    ]
    check_rules(rules, source)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> FinetuneConfig:
    """Read YAML `path` (defaults when None) with the engine's strict loader, plus `--set` overrides."""
    cfg = engine_load_config(FinetuneConfig, path, overrides)
    check_values(cfg, str(path) if path else "<config>")
    return cfg
