"""CLI: python -m pretrain train|export|eval ...  (user errors exit 2 with one line)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.config import ConfigError, add_override_args, print_resolved
from engine.errors import run_cli
from engine.logs import result
from engine.sources import DataError

log = logging.getLogger("pretrain")


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
    e.add_argument("--layers", help="embedding layers to record in config.json, e.g. 0,1,2 (0 = input, 1-2 = LSTMs)")
    e.add_argument("--combine", choices=["sum", "concat"], help="how the embedding layers combine")
    v = sub.add_parser("eval", help="held-out next-residue cross-entropy of an export vs the unigram baseline")
    v.add_argument("--model", required=True, help="export directory (python -m pretrain export)")
    v.add_argument("--data", required=True, help="held-out shard directory (e.g. a test set's shards)")
    v.add_argument("--train", required=True, help="training shard directory: the unigram frequencies")
    v.add_argument("--out", help="write the result as JSON here too")
    args = parser.parse_args(argv)
    commands = {"train": _train, "export": _export, "eval": _eval}
    return run_cli(lambda: commands[args.command](args), "pretrain")


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
    from engine.launch import train_task
    metrics = train_task(BiLSTMTask, cfg, local=args.no_ray)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    log.info(f"trained to step {shown.get('step')}: run directory {shown.get('run_dir')}")
    result(json.dumps(shown, default=str))
    return 0


def _export(args) -> int:
    import json

    from engine.checkpoint import export

    from .embed import load_embedder

    chosen = {}  # config.json "embedding" settings given on the command line
    if args.layers:
        try:
            chosen["layers"] = [int(i) for i in args.layers.split(",")]
        except ValueError:
            chosen["layers"] = []
        if not chosen["layers"] or not set(chosen["layers"]) <= {0, 1, 2}:
            raise ConfigError(f"--layers: {args.layers!r}: give some of 0, 1, 2 separated by commas")
    if args.combine:
        chosen["combine"] = args.combine
    out = export(args.run, args.out)
    if chosen:
        path = out / "config.json"
        config = json.loads(path.read_text())
        config["embedding"] = {**config.get("embedding", {}), **chosen}
        path.write_text(json.dumps(config, indent=2) + "\n")
        load_embedder(out)  # a sum of layers of unequal widths is refused here, naming the key
    log.info(f"exported {out} (model.safetensors, config.json, tokenizer.json)")
    result(json.dumps({"out": str(out)}))
    return 0


def _eval(args) -> int:
    from .evaluate import heldout_cross_entropy, write

    for flag, path in (("--data", args.data), ("--train", args.train)):
        if not (Path(path) / "manifest.json").is_file():
            raise DataError(f"{path}: not a shard directory (no manifest.json) ({flag})")
    write(heldout_cross_entropy(args.model, args.data, args.train), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
