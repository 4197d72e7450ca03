"""Typed configs: YAML -> nested dataclasses, strictly.

Every unknown key, wrong type or bad value is a `ConfigError` whose message names the dotted key
and the file, e.g. ``pretrain/configs/demo.yaml: optim.lr: expected float, got 'fast'``.

A stage's config is a dataclass that subclasses `ExperimentConfig` (the sections the engine reads)
and adds its own sections (``model``, ``loss`` ...). Fields carry their one-line doc as a comment.
Command-line overrides use dotted keys: ``--set optim.lr=3e-4 ray.num_workers=2``.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A user-caused configuration problem; the message is one line naming file and key."""


# ---------------------------------------------------------------- engine sections

@dataclass
class DataConfig:
    train: str = ""  # shard directory or URI (s3://, gs://) with the training rows (a task may declare other sources)
    valid: str = ""  # optional shard directory or URI evaluated every `train.eval_every` steps ("" = none)
    residues_per_batch: int = 8192  # residue budget per micro-batch: padded positions <= this
    max_batch_size: int = 256  # cap on proteins per micro-batch
    max_length: int = 512  # longer proteins are cropped or windowed to this many residues
    long_proteins: Literal["window", "crop"] = "window"  # window: split into consecutive pieces (all residues train); crop: one random piece per epoch
    bucket_ratio: float = 1.05  # pieces whose lengths are within this factor are shuffled together (smaller = less padding, less mixing)
    min_length: int = 1  # proteins shorter than this are skipped (and counted)
    limit: int = 0  # use only the first N rows of each source (0 = all); for smoke tests
    window_chunks: int = 8  # row groups read and length-packed together (bigger = better length grouping, more memory per read task)
    window_mb: int = 256  # ... but no more than this many MB of Parquet data per window (wide per-residue embeddings: 256-row groups of 768 dims are ~100 MB)
    read_tasks: int = 2  # Ray Data tasks reading windows at once, per training worker
    read_cpus: float = 0.0  # CPUs each read task reserves: 0 = none (they share the CPUs of the worker's node and never wait for a free one); > 0 lets Ray place them on spare CPUs anywhere (a local Ray adds them)
    buffer_mb: int = 256  # object-store memory for finished batches, per training worker
    prefetch_batches: int = 4  # batches a training worker fetches ahead


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 100  # linear warm-up from 0 over this many optimizer steps
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # schedule after warm-up
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0  # ZeRO stage 0, 1 or 2
    bf16: Literal["auto", True, False] = "auto"  # auto = bf16 on GPUs that support it, fp32 on CPU; true/false force it
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    config: str = ""  # a DeepSpeed JSON (ds_config.json: offload, bucket sizes, ...) deep-merged over the keys above; it may not contradict them
    extra: dict = field(default_factory=dict)  # raw DeepSpeed keys deep-merged last, over `config` (expert use)


@dataclass
class LoopConfig:
    max_steps: int = 1000  # optimizer steps to train (the schedule spans these)
    seed: int = 0  # seeds model init, batch order and any task randomness
    log_every: int = 10  # optimizer steps between metric reports
    eval_every: int = 0  # optimizer steps between validation passes (0 = only at the end, if data.valid)
    checkpoint_every: int = 200  # optimizer steps between checkpoints (one is always written at the end)
    max_epochs: int = 0  # also stop at the end of this many epochs (0 = no epoch limit; train.max_steps always applies)
    eval_every_epoch: bool = False  # evaluate, report and checkpoint at the end of every epoch (small heads: the epoch is the unit)
    select_metric: str = ""  # evaluation log to select the best model on, e.g. "loss" (= eval_loss); "" = no selection, the export is the last model
    select_mode: Literal["min", "max"] = "min"  # whether a smaller or a larger select_metric is better
    patience: int = 0  # stop after this many evaluations without a better select_metric (0 = never; needs select_metric)


@dataclass
class RaySection:
    num_workers: int = 1  # Ray Train workers (data-parallel ranks)
    use_gpu: bool = False  # one GPU per worker and NCCL; else CPU and gloo
    cpus_per_worker: int = 1  # CPUs reserved per worker
    storage_path: str = "runs"  # RunConfig.storage_path: where checkpoints of all runs live
    name: str = "run"  # RunConfig.name: the run; starting the same name again resumes it
    max_failures: int = 2  # FailureConfig.max_failures: automatic restarts from the latest checkpoint
    num_to_keep: int = 2  # checkpoints kept in storage
    local_num_cpus: int = 0  # CPUs of the local Ray started when RAY_ADDRESS is unset (0 = workers' need)


@dataclass
class WandbSection:
    project: str = "protlm"  # W&B project
    group: str = ""  # W&B group (runs of one experiment sit together); "" = ray.name
    tags: list[str] = field(default_factory=list)  # W&B tags
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto = online iff WANDB_API_KEY is set
    dir: str = ""  # where W&B writes its files ("" = <storage_path>/<name>)


@dataclass
class ExperimentConfig:
    """The sections the engine reads; stage configs subclass this and add their own."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    train: LoopConfig = field(default_factory=LoopConfig)
    ray: RaySection = field(default_factory=RaySection)
    wandb: WandbSection = field(default_factory=WandbSection)


# ---------------------------------------------------------------- loading

def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | tuple = (),
                data: dict | None = None):
    """Build `cls` from the YAML at `path` (or a dict), then apply ``key.sub=value`` overrides."""
    source = str(path) if path else "<config>"
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    if data:
        raw = _merge(raw, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else "", source)
    cfg = from_dict(cls, raw, source)
    if isinstance(cfg, ExperimentConfig):
        check_engine_values(cfg, source)
    return cfg


def check_engine_values(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """Range checks the type system cannot express; each names its key."""
    rules = [
        ("deepspeed.zero_stage", cfg.deepspeed.zero_stage in (0, 1, 2),
         "must be 0, 1 or 2 (ZeRO-3 partitions the parameters themselves, and the engine's export and "
         "checkpoint consolidation read whole parameters from ZeRO-1/2 state; for memory use stage 2 with "
         "offload, e.g. deepspeed.config: configs/deepspeed/zero2_offload.json)"),
        ("deepspeed.grad_accum_steps", cfg.deepspeed.grad_accum_steps >= 1, "must be >= 1"),
        ("deepspeed.grad_clip", cfg.deepspeed.grad_clip >= 0, "must be >= 0"),
        ("data.residues_per_batch", cfg.data.residues_per_batch >= cfg.data.max_length,
         f"must be >= data.max_length ({cfg.data.max_length})"),
        ("data.max_length", cfg.data.max_length >= 2, "must be >= 2"),
        ("data.max_batch_size", cfg.data.max_batch_size >= 1, "must be >= 1"),
        ("data.bucket_ratio", cfg.data.bucket_ratio > 1.0, "must be > 1"),
        ("data.window_chunks", cfg.data.window_chunks >= 1, "must be >= 1"),
        ("data.window_mb", cfg.data.window_mb >= 1, "must be >= 1"),
        ("data.read_tasks", cfg.data.read_tasks >= 1, "must be >= 1"),
        ("data.read_cpus", cfg.data.read_cpus >= 0, "must be >= 0"),
        ("data.buffer_mb", cfg.data.buffer_mb >= 1, "must be >= 1"),
        ("data.prefetch_batches", cfg.data.prefetch_batches >= 0, "must be >= 0"),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.betas", len(cfg.optim.betas) == 2, "must have two values"),
        ("optim.min_lr_ratio", 0 <= cfg.optim.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("train.max_steps", cfg.train.max_steps >= 1, "must be >= 1"),
        ("train.log_every", cfg.train.log_every >= 1, "must be >= 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 1, "must be >= 1"),
        ("train.max_epochs", cfg.train.max_epochs >= 0, "must be >= 0"),
        ("train.patience", cfg.train.patience >= 0, "must be >= 0"),
        ("train.patience", not cfg.train.patience or bool(cfg.train.select_metric), "needs train.select_metric"),
        ("ray.num_workers", cfg.ray.num_workers >= 1, "must be >= 1"),
        ("ray.name", bool(cfg.ray.name) and "/" not in cfg.ray.name, "must be a non-empty name without '/'"),
    ]
    check_rules(rules, source)
    deepspeed_settings(cfg.deepspeed, False, source)  # a bad deepspeed.config fails now, naming the file


def check_rules(rules: list[tuple[str, bool, str]], source: str) -> None:
    """Raise a ConfigError naming the file and key of the first (key, holds, why) rule that fails."""
    for key, ok, why in rules:
        if not ok:
            raise ConfigError(f"{source}: {key}: {why}")


def deepspeed_settings(ds: DeepSpeedSection, bf16: bool, source: str = "<config>") -> dict:
    """The DeepSpeed config dict: the typed keys, then `deepspeed.config` (a JSON file), then
    `deepspeed.extra`, each deep-merged over the last. The loop counts micro-batches and checkpoints
    by the typed keys, so the file may repeat them (or say "auto") but not contradict them."""
    config = {
        # Batches are residue-budgeted, so "micro batch size" is only DeepSpeed bookkeeping.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": ds.grad_accum_steps,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.config:
        config = _merge(config, _deepspeed_file(ds, config, source))
    return _merge(config, ds.extra)


def _deepspeed_file(ds: DeepSpeedSection, typed: dict, source: str) -> dict:
    path = Path(ds.config)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: deepspeed.config: {path} not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu"):
        if raw.get(key, "auto") != "auto":
            raise ConfigError(f"{path}: {key}: batches are residue-budgeted; set data.residues_per_batch instead")
    owned = [("gradient_accumulation_steps", None, "deepspeed.grad_accum_steps"),
             ("gradient_clipping", None, "deepspeed.grad_clip"),
             ("zero_optimization", "stage", "deepspeed.zero_stage"),
             ("bf16", "enabled", "deepspeed.bf16"),
             ("fp16", "enabled", None)]
    for key, sub, yaml_key in owned:
        value = raw.get(key)
        if sub is not None:
            value = value.get(sub) if isinstance(value, dict) else None
        if value is None or value == "auto":
            continue
        if yaml_key is None and value:
            raise ConfigError(f"{path}: {key}.{sub}: fp16 is not supported (bf16 or fp32: deepspeed.bf16)")
        want = typed[key] if sub is None else typed[key][sub]
        if yaml_key and value != want:
            raise ConfigError(f"{path}: {key}{'.' + sub if sub else ''} = {value!r} contradicts {yaml_key} = "
                              f"{want!r} ({source}); set it there")
    raw = {k: v for k, v in raw.items() if v != "auto"}
    if isinstance(raw.get("zero_optimization"), dict):
        raw["zero_optimization"] = {k: v for k, v in raw["zero_optimization"].items() if v != "auto"}
    return raw


def add_override_args(parser) -> None:
    """`--set KEY=VALUE ...` (may repeat; later wins) and `--dry-run`, the same in every stage's CLI."""
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set optim.lr=1e-3 ray.num_workers=4 (may repeat)")
    parser.add_argument("--dry-run", action="store_true",
                        help="load the config and every override, print the resolved config, exit without training")


def print_resolved(cfg) -> None:
    """What --dry-run shows: the resolved config as YAML (and the DeepSpeed dict it implies)."""
    from .logs import result

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if isinstance(cfg, ExperimentConfig):
        bf16 = cfg.deepspeed.bf16 if isinstance(cfg.deepspeed.bf16, bool) else "auto"
        text += "# DeepSpeed config (bf16 'auto' resolves on the worker's hardware):\n"
        text += json.dumps(deepspeed_settings(cfg.deepspeed, bf16), indent=2)
    result(text)


def from_dict(cls: type, raw: dict, source: str = "<config>", prefix: str = ""):
    """Strictly convert a mapping into dataclass `cls` (nested dataclasses included)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, source, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain nested dict of a config (for W&B, config.json and checkpoints)."""
    return dataclasses.asdict(cfg)


def _convert(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: bad value {_show(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{source}: {key}: must be one of {', '.join(map(str, allowed))}, got {_show(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_show(value)}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_show(value)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true/false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string; users mean the number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported field type {tp}")


def _show(value) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(raw: dict, key: str, value, source: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {key}: {part} is not a section")
    node[parts[-1]] = value
