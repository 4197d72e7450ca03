"""Typed configs for finetune, loaded from YAML.

Unknown keys and values of the wrong type are errors that name the key (`section.key`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ConfigError
from engine.config import load_config as engine_load_config

from .errors import FinetuneError


@dataclass
class EmbedConfig:
    batch_residues: int = 16000  # residue budget of one forward batch (rows * longest length)
    max_batch_size: int = 64  # at most this many proteins in one forward batch
    chunk_residues: int = 4000  # longer proteins are embedded in overlapping windows of this size (0 = never: the model handles any length itself)
    chunk_overlap: int = 250  # residues shared by neighbouring windows (the seam is in its middle)
    num_actors: int = 1  # Ray Data actor pool size (one model per actor)
    rows_per_task: int = 512  # rows handed to one map_batches call (rows arrive length-sorted)
    rows_per_shard: int = 2000  # rows per output Parquet file
    use_gpu: bool | None = None  # one GPU per actor; None = when the cluster has one
    dtype: str = "float32"  # model compute dtype: float32 | bfloat16 | float16 (float16 on GPU only)


@dataclass
class DataConfig:
    train: str | None = None  # embedding dir of the training proteins
    valid: str | None = None  # embedding dir for early stopping; None = hold out part of train
    test: str | None = None  # embedding dir used for evaluation only
    holdout_fraction: float = 0.1  # share of train held out (stratified) when valid is None
    split_seed: int = 0  # seed of the held-out split


@dataclass
class ModelConfig:
    head: str = "la"  # la | mlp (per protein) | cnn (per residue)
    kernel_size: int = 9  # LA: convolution width over length
    conv_dropout: float = 0.25  # LA: dropout on the convolution outputs
    hidden: int = 32  # width of the MLP hidden layer (LA and mean-pool MLP)
    dropout: float = 0.25  # dropout in the MLP
    softmax: bool = True  # LA: softmax over length (False = paper ablation: masked mean of e*v)
    max_pool: bool = True  # LA: concatenate the max over length of v (False = paper ablation)
    membrane_head: bool = True  # also predict membrane-bound vs soluble (U left out of the loss)
    membrane_weight: float = 1.0  # weight of the membrane loss next to the location loss
    cnn_filters: int = 32  # CNN: filters of the first convolution (SeqVec: 32)
    cnn_window: int = 7  # CNN: window of both convolutions (SeqVec: 7)


@dataclass
class TrainConfig:
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    epochs: int = 100  # upper bound; early stopping usually ends earlier
    patience: int = 10  # epochs without a better validation loss before stopping
    batch_residues: int = 60000  # residue budget of one training batch (rows * longest length)
    max_batch_size: int = 150  # at most this many proteins per batch (LA paper: 150)
    bucketed: bool = True  # length-sorted residue-budget batches (False = shuffled fixed-size, padded to longest)
    bf16: bool = False  # bfloat16 autocast for the forward pass
    crop: int = 0  # per-protein heads: longer proteins keep their first and last crop/2 residues (0 = whole; DeepLoc used 1000)
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per seed, trained in turn
    num_workers: int = 0  # Ray Train workers (data parallel); 0 = plain single process
    bootstrap: int = 1000  # bootstrap resamples for standard errors
    bootstrap_seed: int = 0  # seed of the bootstrap


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)


_CHOICES = {"head": ("la", "mlp", "cnn"), "dtype": ("float32", "bfloat16", "float16")}


def validate(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in _CHOICES and value not in _CHOICES[f.name]:
            raise FinetuneError(f"config key {prefix}{f.name}: {value!r} is not one of {_CHOICES[f.name]}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise FinetuneError(f"config key {prefix}{f.name}: must be >= 0, got {value}")
    if isinstance(obj, DataConfig) and not 0.0 <= obj.holdout_fraction < 1.0:
        raise FinetuneError(f"config key {prefix}holdout_fraction: must be in [0, 1), got {obj.holdout_fraction}")
    if isinstance(obj, TrainConfig) and not obj.seeds:
        raise FinetuneError(f"config key {prefix}seeds: needs at least one seed")


def validate_tree(obj, prefix: str = "") -> None:
    """`validate` on every nested section."""
    validate(obj, prefix)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value, f"{prefix}{f.name}.")


def load_config(path: str | Path | None, cls=ExperimentConfig):
    """Read YAML `path` into `cls` (defaults when path is None) with the engine's strict loader,
    then check finetune's value ranges; every error names the file and the dotted key."""
    try:
        cfg = engine_load_config(cls, path)
    except ConfigError as err:
        raise FinetuneError(str(err)) from None
    try:
        validate_tree(cfg)
    except FinetuneError as err:
        raise FinetuneError(f"{path or '<config>'}: {err}") from None
    return cfg
