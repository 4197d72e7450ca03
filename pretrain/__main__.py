"""CLI: python -m pretrain train|export ...  (user errors exit 2 with one line)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import ConfigError, add_override_args, print_resolved
from engine.errors import run_cli
from engine.sources import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the biLSTM LM (Ray Train + DeepSpeed; resumes a run of the same name)")
    t.add_argument("--config", required=True, help="YAML config (pretrain/configs/*.yaml)")
    t.add_argument("--data", help="shard directory (overrides data.train)")
    add_override_args(t)
    t.add_argument("--no-ray", action="store_true", help="train in this process without Ray (debugging)")
    e = sub.add_parser("export", help="export consolidated weights + config.json + tokenizer.json")
    e.add_argument("--run", required=True, help="run directory (<storage_path>/<name>) or one checkpoint directory")
    e.add_argument("--out", required=True, help="export directory")
    args = parser.parse_args(argv)
    return run_cli(lambda: _train(args) if args.command == "train" else _export(args))


def _train(args) -> int:
    from . import config as config_mod
    from .task import BiLSTMTask

    overrides = list(args.set) + ([f"data.train={args.data}"] if args.data else [])
    cfg = config_mod.load(args.config, overrides)
    if args.dry_run:
        print_resolved(cfg)
        return 0
    if not cfg.data.train:
        raise ConfigError(f"{args.config}: data.train: no shard directory (use --data DIR)")
    if "://" not in cfg.data.train and not Path(cfg.data.train).is_dir():
        raise DataError(f"{cfg.data.train}: shard directory not found (data.train / --data)")
    if args.no_ray:
        from engine.loop import run_plain
        metrics = run_plain(BiLSTMTask, cfg)
    else:
        from engine.launch import launch
        metrics = launch(BiLSTMTask, cfg)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"done: {shown}")
    return 0


def _export(args) -> int:
    from engine.checkpoint import export

    out = export(args.run, args.out)
    print(f"exported {out} (model.safetensors, config.json, tokenizer.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
